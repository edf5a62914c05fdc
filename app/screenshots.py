"""``autoglm gui --screenshots DIR``: every view with real content in both themes, saved as PNG
(``3-extract-dark.png``: position, view, theme), then exit.

The chat view gets a real exchange with the default model, the classify view a real zero-shot
run, the extract view a real extraction, the documents view a real index of two sample notes (its
collection removed afterwards) and an answer with citations, the others what the engine reports;
nothing is staged by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QUrl
from PySide6.QtWidgets import QApplication

from autoglm.app.background import in_background
from autoglm.app.views.documents import CITE_SCHEME


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        QApplication.processEvents()
        if cond():
            return True
        time.sleep(0.02)
    return False


def take(window: Any, directory: Path, timeout: float = 300) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    window.remember_state = False  # the user's own size, tab and theme stay as they were
    window.resize(1100, 720)  # the same pictures whatever size the window was left at
    if not _wait(lambda: window.client() is not None, timeout):
        raise RuntimeError(f"the engine did not start: {window.engine.describe_exit()}")
    window.show_welcome()  # the first-run view is a view too
    if not _wait(lambda: window.welcome.chat_btn.isEnabled(), timeout):
        raise RuntimeError("the welcome view got no device report in time")
    chat = window.chat
    chat.temperature.setValue(0.0)
    chat.input.setPlainText("What is the capital of France? Answer in one word.")
    chat.send()
    if not _wait(lambda: not chat.streaming and not chat.pending and chat.conversation_id is not None
                 and len(window.store.messages(chat.conversation_id)) == 2, timeout):
        raise RuntimeError("the chat view got no reply in time")
    classify = window.classify
    classify.labels.setText("sports, politics=elections and parliament, technology")
    classify.input.setPlainText("The striker scored twice in the cup final.\n"
                                "Parliament votes on the new election law.\nThe new phone has a faster chip.")
    classify.classify(classify.input.toPlainText().splitlines())
    if not _wait(lambda: classify.table.rowCount() == 3 or classify.status.text().startswith("⚠"), timeout):
        raise RuntimeError("the classify view got no results in time")
    if classify.status.text().startswith("⚠"):
        raise RuntimeError(f"the classify view failed: {classify.status.text()}")
    extract = window.extract
    extract.use_example("Person")
    extract.input.setPlainText("Ann Smith, 34, lives in Oslo and works as a nurse.\nBo Lee (51) moved to Lyon.")
    extract.extract(extract.input.toPlainText().splitlines())
    if not _wait(lambda: extract.table.rowCount() == 2 or extract.status.text().startswith("⚠"), timeout):
        raise RuntimeError("the extract view got no results in time")
    if extract.status.text().startswith("⚠"):
        raise RuntimeError(f"the extract view failed: {extract.status.text()}")
    _documents(window, directory, timeout)
    window.catalog.refresh()
    if not _wait(lambda: window.catalog.table.rowCount() > 0 or window.catalog.status.text().startswith("⚠"),
                 timeout):
        raise RuntimeError("the catalog view got no answer from the engine in time")
    window.models.refresh()
    window.device.refresh()
    if not _wait(lambda: window.models.table.rowCount() > 0 and window.device.reasons.rowCount() > 0, timeout):
        raise RuntimeError("the models and device views got no answer from the engine in time")
    saved = []
    for mode in ("light", "dark"):
        window.set_theme(mode, save=False)
        for index in range(window.tabs.count()):
            window.tabs.setCurrentIndex(index)
            _wait(lambda: False, 0.3)  # let the view lay out and paint
            name = window.tabs.tabText(index).lower().replace("&", "").replace(" ", "-")
            path = directory / f"{index + 1}-{name}-{mode}.png"
            window.grab().save(str(path))
            saved.append(path)
    return saved


SAMPLE_NOTES = {
    "trip.md": "# Trip to Oslo\n\nWe fly to Oslo on 3 May and stay four nights near the opera house.\n\n"
               "## Budget\n\nThe budget is 1,200 euros for the hotel and 300 euros for food.",
    "garden.txt": "Tomatoes go in the greenhouse in April. Water them every second day, more in July.",
}


def _documents(window: Any, directory: Path, timeout: float) -> None:
    """The documents view with a real index and answer; the sample collection is removed again."""
    folder = directory / "sample-documents"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in SAMPLE_NOTES.items():
        (folder / name).write_text(text, encoding="utf-8")
    view = window.documents
    view.name.setText("screenshot-sample")
    view.add_paths([str(folder)])
    if not _wait(lambda: not view.indexing and view.collections.count() > 0, timeout):
        raise RuntimeError(f"the documents view did not index in time: {view.status.text()}")
    for row in range(view.collections.count()):
        if view.collections.item(row).text() == "screenshot-sample":
            view.collections.setCurrentRow(row)
    view.question.setText("What is the budget for the Oslo trip?")
    view.ask()
    if not _wait(lambda: view.ask_btn.isEnabled() and bool(view.citations), timeout):
        raise RuntimeError(f"the documents view got no answer in time: {view.answer.toPlainText()}")
    view.answer.anchorClicked.emit(QUrl(f"{CITE_SCHEME}:0"))
    client = window.client()
    if client is not None:  # the user's index keeps nothing of this run
        in_background(lambda: client.remove_collection("screenshot-sample"), lambda _: None, lambda _: None)
