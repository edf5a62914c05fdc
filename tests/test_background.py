"""The GUI's one helper for engine calls: work off the UI thread, results on it (fast tier)."""

from __future__ import annotations

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from autoglm.app.background import in_background, on_ui  # noqa: E402
from autoglm.app.engine_process import EngineError  # noqa: E402


def test_work_runs_off_the_ui_thread_and_results_come_back_on_it(qtbot):
    seen: dict[str, bool] = {}

    def work() -> int:
        seen["work on UI thread"] = threading.current_thread() is threading.main_thread()
        return 42

    def done(value: int) -> None:
        seen["done on UI thread"] = threading.current_thread() is threading.main_thread()
        seen["value"] = value == 42

    in_background(work, done)
    qtbot.waitUntil(lambda: "done on UI thread" in seen, timeout=5000)
    assert seen == {"work on UI thread": False, "done on UI thread": True, "value": True}


def test_engine_errors_arrive_as_one_line_on_the_ui_thread(qtbot):
    errors: list[tuple[str, bool]] = []

    def fail() -> None:
        raise EngineError("the engine is not answering")

    def on_error(message: str) -> None:
        errors.append((message, threading.current_thread() is threading.main_thread()))

    in_background(fail, lambda _: None, on_error)
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert errors == [("the engine is not answering", True)]
    thread_calls: list[bool] = []
    threading.Thread(target=lambda: on_ui(lambda: thread_calls.append(
        threading.current_thread() is threading.main_thread()))).start()
    qtbot.waitUntil(lambda: bool(thread_calls), timeout=5000)
    assert thread_calls == [True]


def test_any_failure_reaches_the_view_not_only_engine_errors(qtbot):
    """A bug in a worker (a KeyError on an odd reply) used to end the thread with no callback, and
    the view waited for good."""
    errors: list[str] = []
    in_background(lambda: {}["choices"], lambda _: None, errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert errors == ["internal error: KeyError: 'choices'"]


def test_a_reply_for_a_deleted_widget_is_dropped(qtbot):
    """A window closed (and deleted) while its engine call ran: the answer must not touch it."""
    import threading

    import shiboken6
    from PySide6.QtWidgets import QLabel

    from autoglm.app.background import in_background

    label = QLabel()
    release = threading.Event()
    in_background(lambda: release.wait(10) and "late", label.setText)
    shiboken6.delete(label)
    release.set()
    qtbot.wait(200)  # the queued call runs and is dropped, no "already deleted" error
