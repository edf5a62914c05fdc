"""The bundles as a user without Python gets them: built by packaging/build.py, run with an empty
environment (``env -i``), a fresh HOME and no Python on PATH."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.test_gui import VIEWS

ROOT = Path(__file__).resolve().parent.parent
PARIS = "What is the capital of France? Answer in one word."

pytestmark = pytest.mark.slow


def _clean_env(home: Path, **extra: str) -> list[str]:
    (home / "bin").mkdir(parents=True, exist_ok=True)  # PATH holds nothing, so no python either
    return ["env", "-i", f"HOME={home}", f"PATH={home / 'bin'}", "LANG=C.UTF-8",
            *(f"{k}={v}" for k, v in extra.items())]


def _build(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    build = [sys.executable, str(ROOT / "packaging" / "build.py"), *args, "--dist", str(tmp_path / "dist")]
    out = subprocess.run(build, capture_output=True, text=True, timeout=1200, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _selftest_line(doctor_stdout: str) -> str:
    return doctor_stdout.split("Kernel self-test", 1)[1].splitlines()[1]


def test_headless_bundle_runs_with_an_empty_environment(tmp_path, qwen_05b):
    built = _build(tmp_path, "headless", "--with-model", "--report")
    report = built.stdout
    assert "headless" in report and " MB" in report and report.count(" s") >= 2, report
    exe = tmp_path / "dist" / "autoglm" / "autoglm"
    home = tmp_path / "home"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*_clean_env(home), str(exe), *args], capture_output=True, text=True, timeout=300,
                              check=False)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("autoglm "), version.stderr
    doctor = run("doctor")
    assert doctor.returncode == 0, doctor.stderr
    # the crash-isolated child ran in the bundle and reached the verdict the installed package reaches
    # for the same model on this CPU (which verdict is the CPU's: AMX buffers for Q4_K_M die of SIGILL
    # on one Xeon here and pass elsewhere; a bundle that cannot start its child would differ)
    installed = run_cli("doctor", "--model", qwen_05b.name)
    assert installed.returncode == 0, installed.stderr
    verdict = next(w for w in ("passed", "crashed", "failed") if w in _selftest_line(installed.stdout))
    assert verdict in _selftest_line(doctor.stdout), (doctor.stdout, installed.stdout)
    assert "qwen2.5-coder-0.5b" in doctor.stdout  # the default shipped inside, found without any download
    answer = run("run", PARIS, "--temperature", "0")
    assert answer.returncode == 0 and "Paris" in answer.stdout, answer.stderr
    serve = subprocess.Popen([*_clean_env(home), str(exe), "serve", "--port", "0", "--parallel", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # the edge-board case: the OpenAI-compatible server from the bundle
        banner = serve.stdout.readline()
        assert banner.startswith("serving qwen2.5-coder-0.5b on http://127.0.0.1:"), serve.stderr.read()
        import openai

        client = openai.OpenAI(base_url=banner.split(" on ")[1].split()[0] + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": PARIS}],
                                               temperature=0, max_tokens=8)
        assert "Paris" in reply.choices[0].message.content
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    models = run("models", "rm", "qwen2.5-coder-0.5b")
    assert models.returncode != 0 and "ships inside this app bundle" in models.stderr
    assert not list((home / ".local" / "share" / "autoglm" / "models").glob("*"))  # nothing copied to the store


def test_gui_bundle_renders_every_view(tmp_path):
    _build(tmp_path, "gui")
    exe = tmp_path / "dist" / "AutoGLM" / "AutoGLM"
    internal = tmp_path / "dist" / "AutoGLM" / "_internal"
    assert not (internal / "torch").exists() and not (internal / "PySide6" / "Qt" / "translations").exists()
    assert not list(internal.glob("PySide6/Qt/lib/libQt6Qml*"))  # only the Qt modules the window uses
    shots = tmp_path / "shots"
    out = subprocess.run([*_clean_env(tmp_path / "home", QT_QPA_PLATFORM="offscreen"), str(exe), "gui",
                          "--screenshots", str(shots)], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(
        f"{i + 1}-{view}-{theme}.png" for theme in ("light", "dark") for i, view in enumerate(VIEWS))
