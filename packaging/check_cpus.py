"""Run the installed llama.cpp build on older x86-64 CPUs, emulated by qemu-user, and print which
CPU variant it picked and what it answered: ``python packaging/check_cpus.py [MODEL.gguf]``.

This is how a portable build (packaging/README.md) proves it never dies with an illegal
instruction on a CPU older than the build machine; a build tuned to this CPU fails here. The
bundle's own executable cannot be checked this way (PyInstaller's bootloader re-executes itself,
which leaves the emulator), so it checks the llama-cpp-python the bundle is built from.
Needs Debian's qemu-user.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CPUS = ["Westmere", "SandyBridge", "Haswell", "Skylake-Server", "Icelake-Server"]  # SSE4.2 .. AVX-512 VNNI
PROBE = """
import sys
from autoglm.engine.backends.llama_lib import chosen_variant, llama_cpp  # loads the best variant for this CPU
from llama_cpp import Llama
m = Llama(sys.argv[1], n_ctx=128, n_threads=2, verbose=False)
text = m("The capital of France is", max_tokens=4, temperature=0)["choices"][0]["text"]
print(chosen_variant() or "built-in", repr(text.strip()))
"""


def default_model() -> str:
    from autoglm.engine.models.manager import resolve

    return str(resolve(None).path)


def main(argv: list[str]) -> int:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        print("check_cpus.py: error: qemu-x86_64 not found (Debian: apt-get install qemu-user)", file=sys.stderr)
        return 2
    model = argv[0] if argv else default_model()
    if not Path(model).is_file():
        print(f"check_cpus.py: error: no model file at {model}", file=sys.stderr)
        return 2
    print(f"{'emulated CPU':<16} result")
    failed = 0
    for cpu in CPUS:
        out = subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", PROBE, model], capture_output=True, text=True,
                             timeout=900, check=False)
        lines = (out.stdout.strip() or out.stderr.strip() or "no output").splitlines()
        ok = out.returncode == 0
        failed += not ok
        print(f"{cpu:<16} {'variant ' if ok else 'FAILED: '}{lines[-1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
