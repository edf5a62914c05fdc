"""One module per view of the main window, and the one fetch they all refresh with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import QLabel

from app.engine_process import EngineClient, EngineError


def fetch(client: Callable[[], EngineClient | None], path: str, status: QLabel) -> Any | None:
    """GET ``path`` from the engine, or None with the reason shown in ``status``."""
    engine = client()
    if engine is None:
        status.setText("the engine is not running")
        return None
    try:
        return engine.get(path)
    except EngineError as exc:
        status.setText(str(exc))
        return None
