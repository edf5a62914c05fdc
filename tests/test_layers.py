"""The architecture as a contract: layers that never import upward (not even inside a function),
no import cycle in engine/ and app/ counting imports inside functions, imports of our own modules
at the top of the file (only the CLI entry points import lazily, for start-up time), the GUI
reaching the engine only over HTTP, and the native runtimes imported in their one safe order."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own layer or lower ones. Names as installed: engine/ and app/
# are autoglm.engine and autoglm.app (pyproject's package-dir); src/autoglm/ is the Python API's facade.
_LAYERS: list[tuple[str, list[str]]] = [
    ("helpers", ["engine", "engine.errors", "engine.paths", "engine.fs", "engine.process", "engine.sampling",
                 "engine.startup",
                 "engine.models", "engine.models.sources", "engine.backends", "engine.tasks"]),
    ("facts", ["engine.hardware", "engine.models.store", "engine.models.gguf_info", "engine.models.gguf_header",
               "engine.models.progress"]),
    ("backends", ["engine.backends.*"]),
    ("decisions", ["engine.planner", "engine.selftest", "engine.router", "engine.tuning", "engine.tuning.search",
                   "engine.tuning.cache"]),
    ("install jobs", ["engine.models.manager", "engine.models.install", "engine.models.quantize",
                      "engine.models.catalog", "engine.models.sources.*"]),
    ("runtime", ["engine.scheduler", "engine.scheduler.*", "engine.tasks.*", "engine.loader", "engine.runtime",
                 "engine.tuning.child", "engine.tuning.runner", "engine.tuning.background", "engine.tuning.quality",
                 "engine.tuning.variants", "engine.mcp_tools", "engine.docs", "engine.docs.*"]),
    ("front ends", ["engine.server", "engine.server.*", "engine.cli", "engine.cli_tasks", "engine.cli_progress",
                    "engine.api", "engine.cli_extract", "engine.cli_prompt", "engine.cli_tune", "engine.cli_agent",
                    "engine.agent", "engine.cli_cluster", "engine.cluster", "engine.cluster.*",
                    "engine.cli_docs", "engine.cli_model"]),
    ("app", ["app", "app.*"]),
    ("facade", ["", "__main__"]),  # autoglm itself: `from autoglm import Engine`, imported lazily
]
LAYERS = [(name, [f"autoglm.{p}" if p else "autoglm" for p in patterns]) for name, patterns in _LAYERS]
# entry points: `autoglm --help` must not load llama.cpp; `import autoglm.engine.x` must not load the API
LAZY_OK = {"autoglm.engine.cli", "autoglm.engine.cli_tasks", "autoglm.engine.cli_extract", "autoglm.engine.cli_prompt",
           "autoglm.engine.cli_tune", "autoglm.engine.cli_cluster", "autoglm.engine.cli_model",
           "autoglm.engine.cli_docs", "autoglm"}
# The one upward edge: the `autoglm` command is the launcher of every front end, the window included.
ALLOWED_UP = {("autoglm.engine.cli", "autoglm.app.main_window")}
APP_MAY_USE = {"autoglm.engine.paths", "autoglm.engine.process"}  # how to start the engine child and where its files go


def module_name(path: Path) -> str:
    """Installed, engine/ and app/ are autoglm.engine and autoglm.app (pyproject's package-dir)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    parts = list(rel[1:]) if rel[0] == "src" else ["autoglm", *rel]  # src/autoglm/ is the facade
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = None
    for i, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            exact = pattern == module
            under = pattern.endswith(".*") and module.startswith(pattern[:-1])
            if exact or (under and best is None):
                best = i
            if exact:
                return i
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for top in ("src/autoglm", "engine", "app") for p in (ROOT / top).rglob("*.py")}


def imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported module of ours, inside a function?, line) for every import statement."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in modules:
                        found.append((alias.name, in_function, child.lineno))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    target = sub if sub in modules else child.module
                    if target in modules:
                        found.append((target, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


def graph() -> dict[str, list[tuple[str, bool, int]]]:
    modules = our_modules()
    return {name: imports(path, modules) for name, path in modules.items()}


def test_no_module_imports_a_higher_layer():
    bad = []
    for mod, edges in graph().items():
        for target, _, line in edges:
            if layer_of(target) > layer_of(mod) and (mod, target) not in ALLOWED_UP:
                low, high = LAYERS[layer_of(mod)][0], LAYERS[layer_of(target)][0]
                bad.append(f"{mod}:{line} ({low}) imports {target} ({high})")
    assert not bad, "\n".join(bad)


def test_our_modules_are_imported_at_the_top_of_the_file():
    bad = [f"{mod}:{line} imports {target} inside a function" for mod, edges in graph().items() if mod not in LAZY_OK
           for target, lazy, line in edges if lazy]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_counting_imports_inside_functions():
    edges = {mod: {t for t, _, _ in e if t != mod} for mod, e in graph().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for mod in sorted(edges):
        if mod not in state and (cycle := dfs(mod)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_gui_reaches_the_engine_only_over_http():
    bad = [f"{mod}:{line} imports {target}" for mod, edges in graph().items() if mod.startswith("autoglm.app")
           for target, _, line in edges if target.startswith("autoglm.engine") and target not in APP_MAY_USE]
    assert not bad, "\n".join(bad)


def test_the_contract_would_catch_a_violation(tmp_path):
    """The checker itself: an upward import inside a function is found."""
    fake = ROOT / "engine" / "hardware.py"
    source = fake.read_text() + "\n\ndef _sneaky():\n    from autoglm.engine.server import app  # noqa\n"
    probe = tmp_path / "hardware.py"
    probe.write_text(source)
    found = imports(probe, our_modules())
    assert ("autoglm.engine.server.app", True) in {(t, lazy) for t, lazy, _ in found}
    assert layer_of("autoglm.engine.server.app") > layer_of("autoglm.engine.hardware")


def test_only_llama_lib_imports_the_native_runtimes_at_module_level():
    """Any other module importing llama_cpp first (``from llama_cpp import Llama`` sorts before our
    own imports) would load the CUDA build before onnxruntime: every command crashed so on a GPU."""
    bad = []
    for mod, path in our_modules().items():
        if mod == "autoglm.engine.backends.llama_lib":
            continue
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            native = [n for n in names if n.split(".")[0] in ("llama_cpp", "onnxruntime")]
            bad += [f"{mod}:{node.lineno} imports {n}" for n in native]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("modules", [
    "autoglm.engine.backends.llama_lib",  # the one place, alone
    "autoglm.engine.cli, engine.loader, engine.server.app, engine.selftest",  # what doctor, run and serve import
])
def test_onnxruntime_is_loaded_before_llama_cpp(modules):
    """A CUDA build of llama.cpp followed by onnxruntime segfaulted every command on an H100."""
    code = f"import sys; import {modules}; print([k for k in sys.modules if k in ('onnxruntime', 'llama_cpp')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['onnxruntime', 'llama_cpp']"


def test_pyproject_installs_every_package_folder():
    """package-dir renames engine/ and app/, so packages are listed by hand: none may be missing."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {module_name(p.parent / "__init__.py") for top in ("src/autoglm", "engine", "app")
               for p in (ROOT / top).rglob("*.py")}
    assert folders == listed


@pytest.mark.slow
def test_the_wheel_puts_only_autoglm_at_the_top_of_site_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    import zipfile

    (wheel,) = tmp_path.glob("open_autoglm-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"autoglm"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "autoglm/engine/cli.py" in names and "autoglm/app/main_window.py" in names
    assert "autoglm/engine/backends/onnx/encoder.py" in names


def test_a_checkout_root_on_sys_path_does_not_shadow_the_installed_package():
    """``python -m autoglm`` or pytest at the repository root put the checkout first on sys.path:
    nothing there may be importable as ``autoglm`` (the facade lives in src/), so every name
    resolves through the dev install's link tree, the same tree mypy and pyright read."""
    code = "import autoglm.engine.errors as e, autoglm; print(e.__file__); print(autoglm.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    engine_file, facade_file = out.stdout.split()
    assert Path(engine_file).resolve() == ROOT / "engine" / "errors.py"
    assert Path(facade_file).resolve() == ROOT / "src" / "autoglm" / "__init__.py"
    assert not (ROOT / "autoglm").exists()


def test_the_architecture_note_places_every_module_in_its_layer():
    """docs/architecture.md's table is the picture a newcomer reads: each module of the package is
    in it once, in the layer this contract gives it, and no row names a module that is gone."""
    note = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([a-z ]+) \| `([^`]+\.py)` \| (.+) \|$", note, re.M)
    placed: dict[str, str] = {}
    for layer, path, job in rows:
        assert path not in placed, f"{path} is in the architecture note twice"
        assert job.strip(), f"{path} has no job in the architecture note"
        placed[path] = layer
    modules = {str(p.relative_to(ROOT)): name for name, p in our_modules().items()}
    assert set(placed) == set(modules), {"unplaced": set(modules) - set(placed), "gone": set(placed) - set(modules)}
    wrong = {p: (layer, LAYERS[layer_of(modules[p])][0]) for p, layer in placed.items()
             if layer != LAYERS[layer_of(modules[p])][0]}
    assert not wrong, f"(note's layer, contract's layer): {wrong}"


def _home_with_wait_policy(home: Path, content: bytes) -> dict[str, str]:
    """An environment whose data folder holds this wait-policy cache file, and no policy of its own."""
    (home / "cache").mkdir()
    (home / "cache" / "omp-wait-policy").write_bytes(content)
    return {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"AUTOGLM_HOME": str(home)}


def test_importing_the_engine_changes_no_environment_only_start_up_does(tmp_path):
    """The measured OpenMP wait policy is start-up's job (``engine.startup``, called by the CLI and
    ``from autoglm import Engine``), not a side effect of importing llama.cpp's module."""
    env = _home_with_wait_policy(tmp_path, b"PASSIVE")
    code = ("import os; import autoglm.engine.backends.llama_lib; print(os.environ.get('OMP_WAIT_POLICY'));"
            "from autoglm.engine import startup; print(startup.apply_wait_policy())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "passive"]


def test_only_the_engine_client_names_the_engines_routes():
    """The views call EngineClient's methods (one per route); no other app module spells a path,
    so a route that changes is mended in one place."""
    spelled = []
    for name, path in our_modules().items():
        if not name.startswith("autoglm.app") or name == "autoglm.app.engine_process":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith(("/v1/", "/autoglm/", "/health", "/metrics")):
                spelled.append(f"{name}:{node.lineno} {node.value}")
            if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) \
                    and str(node.values[0].value).startswith(("/v1/", "/autoglm/")):
                spelled.append(f"{name}:{node.lineno} f-string {node.values[0].value}")
    assert not spelled, spelled


def test_a_damaged_wait_policy_file_leaves_every_command_working(tmp_path):
    """The file is a cache the tuner writes; bytes that are not text (a disk error, a hand edit) must not
    turn every `autoglm` command into a traceback at start-up."""
    env = _home_with_wait_policy(tmp_path, b"\xff\xfe\x00garbage")
    out = subprocess.run([sys.executable, "-m", "autoglm", "--version"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0 and not out.stderr, out.stderr
