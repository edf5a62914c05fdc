"""Build the bundles: ``python packaging/build.py [headless|gui|all] [--onefile] [--with-model] [--report]``.

- ``headless``: ``dist/autoglm/`` (or ``dist/autoglm`` with ``--onefile``), the CLI and server;
- ``gui``: ``dist/AutoGLM/``, the desktop app (always a folder: a one-file GUI would unpack Qt
  on every start, and self-extractors are what antivirus tools flag);
- ``--with-model``: the default model (Qwen2.5-Coder-0.5B-Instruct) ships inside, read-only, so the
  first run needs no network;
- ``--report``: bundle sizes and launch-to-first-token times, measured by running each bundle
  the way a user would: an empty environment, a fresh HOME.

The llama-cpp-python installed in the build environment is what the bundle runs; for bundles that
must run on any x86-64 CPU build it portable first (packaging/README.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPECS = {"headless": "autoglm.spec", "gui": "AutoGLM.spec"}
NAMES = {"headless": "autoglm", "gui": "AutoGLM"}
PARIS = "What is the capital of France? Answer in one word."


def model_store(work: Path) -> Path:
    """A store holding only the default model, pulled the way a user's first run does."""
    store = work / "model-home"
    env = {k: v for k, v in os.environ.items() if k != "AUTOGLM_DEFAULT_MODEL"}  # the bundle's own default
    subprocess.run([sys.executable, "-m", "autoglm", "models", "pull", "default"], cwd=ROOT,
                   env={**env, "AUTOGLM_HOME": str(store)}, check=True, stdout=subprocess.DEVNULL)
    return store / "models"


def build(kind: str, dist: Path, work: Path, onefile: bool = False, models: Path | None = None) -> Path:
    env = {**os.environ, "AUTOGLM_BUNDLE_ONEFILE": "1" if onefile and kind == "headless" else "0"}
    if models is not None:
        env["AUTOGLM_BUNDLE_MODELS"] = str(models)
    subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN", "--distpath",
                    str(dist), "--workpath", str(work / kind), str(HERE / SPECS[kind])], env=env, check=True)
    out = dist / NAMES[kind]
    return out / NAMES[kind] if out.is_dir() else out


def clean_env(home: Path) -> dict[str, str]:
    """What ``env -i`` leaves, plus a fresh HOME and a PATH with no Python on it."""
    empty_bin = home / "bin"
    empty_bin.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "PATH": str(empty_bin), "LANG": "C.UTF-8"}


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*")
                                                          if p.is_file() and not p.is_symlink())


def first_token_seconds(exe: Path, home: Path) -> tuple[float, float]:
    """(launch to first answer byte, launch to exit) of ``run`` on the default model."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(exe), "run", PARIS, "--temperature", "0", "--max-tokens", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(home))
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    first_at = time.perf_counter() - start
    proc.communicate(timeout=300)
    if not first or proc.returncode:
        raise SystemExit(f"{exe} run failed (exit {proc.returncode})")
    return first_at, time.perf_counter() - start


def report(built: dict[str, Path]) -> None:
    print(f"{'bundle':<24} {'size':>9} {'first run: to 1st token':>24} {'next run: to 1st token':>23}")
    for kind, exe in built.items():
        bundle = exe.parent if exe.parent.name == NAMES[kind] else exe
        line = f"{kind + (' (onefile)' if bundle.is_file() else ''):<24} {size_of(bundle) / 2**20:>7.0f} MB"
        if kind == "headless":
            with tempfile.TemporaryDirectory() as home:
                cold = first_token_seconds(exe, Path(home))  # includes the kernel self-test
                warm = first_token_seconds(exe, Path(home))
            line += f" {cold[0]:>22.1f} s {warm[0]:>21.1f} s"
        else:
            with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as shots:
                start = time.perf_counter()
                subprocess.run([str(exe), "gui", "--screenshots", shots], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**clean_env(Path(home)), "QT_QPA_PLATFORM": "offscreen"})
                line += (f"   launch to every view rendered, with a chat reply: {time.perf_counter() - start:.1f} s "
                         "(first run: includes fetching and converting the classify encoder)")
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", nargs="?", default="all", choices=["headless", "gui", "all"])
    parser.add_argument("--onefile", action="store_true", help="headless bundle as one self-extracting file")
    parser.add_argument("--with-model", action="store_true", help="ship the default model inside")
    parser.add_argument("--dist", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    parser.add_argument("--report", action="store_true", help="print sizes and launch-to-first-token times")
    args = parser.parse_args(argv)
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        print("build.py: error: PyInstaller is not installed (pip install -e '.[bundle]')", file=sys.stderr)
        return 2
    kinds = ["headless", "gui"] if args.kind == "all" else [args.kind]
    dist = Path(args.dist).resolve()
    with tempfile.TemporaryDirectory(prefix="autoglm-build-") as tmp:
        work = Path(tmp)
        models = model_store(work) if args.with_model else None
        built = {}
        for kind in kinds:
            started = time.perf_counter()
            built[kind] = build(kind, dist, work, args.onefile, models)
            print(f"built {built[kind]} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.report:
        report(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
