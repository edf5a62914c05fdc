"""Open-AutoGLM: offline language models on your own machine.

The Python API (``from autoglm import Engine``) is loaded on first use, so that importing the engine's
own modules (``autoglm.engine.*``: the CLI, the server, the self-test child) never pays for it.
The repository's engine/ and app/ folders are installed here as ``autoglm.engine`` and
``autoglm.app``, so nothing generic lands at the top of site-packages. This facade lives in src/ so
that a checkout's root on ``sys.path`` (``python -m``, pytest) never shadows the installed package:
the dev install (``editable_mode=strict``) is a tree of links that mypy, pyright and editors follow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Engine", "ChatResult", "Prediction", "AutoGLMError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from autoglm.engine import startup

        startup.apply_wait_policy()  # this process's start-up, before the API loads llama.cpp
        from autoglm.engine import api

        return getattr(api, name)
    raise AttributeError(f"module 'autoglm' has no attribute {name!r}")
