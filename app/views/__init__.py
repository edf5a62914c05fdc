"""One module per view of the main window, and the one fetch they all refresh with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import QLabel

from autoglm.app.background import in_background
from autoglm.app.engine_process import EngineClient


def fetch(client: Callable[[], EngineClient | None], call: Callable[[EngineClient], Any], status: QLabel,
          on_reply: Callable[[Any], Any], then: Callable[[], Any] | None = None) -> None:
    """``call(client)`` (one of the client's route methods) off the UI thread; ``on_reply(body)``
    then ``then()`` on the UI thread, or the reason shown in ``status``."""
    engine = client()
    if engine is None:
        status.setText("the engine is not running")
        return

    def done(body: Any) -> None:
        on_reply(body)
        if then is not None:
            then()

    in_background(lambda: call(engine), done, status.setText, name=getattr(call, "__name__", "fetch"))
