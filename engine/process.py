"""How this install starts a child of itself: ``python -m MODULE`` from a Python install, or the
bundle's own executable (``--autoglm-module MODULE``, handled by packaging/entry.py) from a
PyInstaller bundle, where there is no Python to run ``-m`` with."""

from __future__ import annotations

import sys

MODULE_FLAG = "--autoglm-module"


def frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def module_command(module: str, *args: str) -> list[str]:
    """argv that runs ``module`` as ``__main__`` with ``args`` in a new process of this install."""
    if frozen():
        return [sys.executable, MODULE_FLAG, module, *args]
    return [sys.executable, "-m", module, *args]
