"""The bundles' entry point: the CLI, or a module run as ``__main__`` when the app starts a child
of itself (engine.process.module_command: the kernel self-test, the GUI's engine, pip)."""

from __future__ import annotations

import runpy
import sys

from autoglm.engine.process import MODULE_FLAG


def main(default: list[str]) -> int:
    if len(sys.argv) > 2 and sys.argv[1] == MODULE_FLAG:
        module = sys.argv[2]
        sys.argv = [sys.argv[0], *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    from autoglm.engine.cli import main as cli

    return cli(sys.argv[1:] or default)
