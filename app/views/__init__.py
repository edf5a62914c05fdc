"""One module per view of the main window, and the one fetch they all refresh with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import QLabel

from app.background import in_background
from app.engine_process import EngineClient


def fetch(client: Callable[[], EngineClient | None], path: str, status: QLabel,
          on_reply: Callable[[Any], Any]) -> None:
    """GET ``path`` from the engine off the UI thread; ``on_reply(body)`` on the UI thread, or the
    reason shown in ``status``."""
    engine = client()
    if engine is None:
        status.setText("the engine is not running")
        return
    in_background(lambda: engine.get(path), on_reply, status.setText, name=f"GET {path}")
