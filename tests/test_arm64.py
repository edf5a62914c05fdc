"""arm64 for real, under emulation (opt-in: AUTOGLM_ARM64=1, root, Debian's packages reachable;
the better part of an hour on 2 cores): packaging/arm64/emulate.sh builds an arm64 Debian root,
installs the project there (llama.cpp compiled for armv8.2-a with dot product), and runs doctor,
run and classify under qemu-user-static. This checks what its log says."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "packaging" / "arm64" / "emulate.sh"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("AUTOGLM_ARM64") != "1" or os.geteuid() != 0,
                    reason="opt-in (AUTOGLM_ARM64=1, as root): an hour of emulation")
def test_the_project_installs_plans_answers_and_classifies_on_emulated_arm64(tmp_path):
    root = os.environ.get("AUTOGLM_ARM64_ROOT", str(tmp_path / "arm64-root"))
    out = subprocess.run(["bash", str(SCRIPT), root], capture_output=True, text=True, timeout=3 * 3600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "\naarch64\n" in log  # the emulated machine, not the host
    doctor = log.split("== autoglm doctor\n")[1].split("\n== ")[0]
    assert "neon" in doctor and "dotprod" in doctor  # planned from what the emulated CPU reports
    answer = log.split("== autoglm run")[1].split("\n== ")[0]
    assert "Paris" in answer
    labels = log.split("== autoglm classify")[1].split("\n== ")[0]
    assert "sport" in labels
