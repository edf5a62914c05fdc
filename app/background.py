"""The one way the window runs engine calls: off the UI thread, with the result (or the engine's
error, one line) delivered back on the UI thread. Qt widgets may only be touched from the UI
thread, and an HTTP call there freezes the window for as long as the engine takes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import shiboken6
from PySide6.QtCore import QObject, Signal

from autoglm.app.engine_process import EngineError

T = TypeVar("T")
log = logging.getLogger(__name__)


class _Poster(QObject):
    """Lives on the UI thread; a closure emitted from any thread runs there (a queued connection)."""

    call = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.call.connect(self._run)

    @staticmethod
    def _run(fn: Callable[[], Any]) -> None:
        fn()


_poster = _Poster()  # made when the app package is imported, on the UI thread


def on_ui(fn: Callable[[], Any]) -> None:
    """Run ``fn`` on the UI thread (callable from any thread)."""
    _poster.call.emit(fn)


def _alive(fn: Callable[..., Any]) -> bool:
    """False when ``fn`` is a method of a widget Qt has deleted meanwhile (its window was closed)."""
    owner = getattr(fn, "__self__", None)
    return not isinstance(owner, QObject) or shiboken6.isValid(owner)


def in_background(work: Callable[[], T], on_done: Callable[[T], Any],
                  on_error: Callable[[str], Any] | None = None, name: str = "engine-call") -> None:
    """``work()`` on a thread; then ``on_done(result)`` or ``on_error(message)`` on the UI thread."""

    def run() -> None:
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - every failure must reach the view (as Anki's QueryOp), not
            # only EngineError: a worker that died silently left the chat view "streaming" for good
            message = str(exc) if isinstance(exc, EngineError) else f"internal error: {type(exc).__name__}: {exc}"
            if not isinstance(exc, EngineError):
                log.exception("background call %s failed", name)
            if on_error is not None:
                on_ui(lambda: on_error(message) if _alive(on_error) else None)
            return
        on_ui(lambda: on_done(result) if _alive(on_done) else None)

    threading.Thread(target=run, name=name, daemon=True).start()
