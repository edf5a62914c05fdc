"""Open-AutoGLM: offline language models on your own machine.

The Python API (``from autoglm import Engine``) is loaded on first use, so that importing the engine's
own modules (``autoglm.engine.*``: the CLI, the server, the self-test child) never pays for it.
The repository's engine/ and app/ folders are installed here as ``autoglm.engine`` and
``autoglm.app``, so nothing generic lands at the top of site-packages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Run from a checkout (``python -m autoglm`` at the repository root, with or without an install),
# this folder stands beside engine/ and app/ rather than holding them: look there as well, or the
# checkout's facade would hide an installed copy and find no autoglm.engine at all.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "engine" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821 - a package's own __path__

__all__ = ["Engine", "ChatResult", "Prediction", "AutoGLMError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from autoglm.engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'autoglm' has no attribute {name!r}")
