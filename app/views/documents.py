"""Documents view: collections of the user's files, indexed by the engine child; drop a folder (or
Add folder…), watch each file's progress, ask, and click a citation to read the passage it points to
(and open its file). The engine does the reading, chunking and embedding (``engine/docs/``); this
view only shows what it reports, so a hostile file can take at most the engine child down, never
the window."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from autoglm.app.background import in_background, on_ui
from autoglm.app.engine_process import EngineClient
from autoglm.app.widgets import two_panes

CITE_SCHEME = "cite"
DEFAULT_COLLECTION = "documents"


class DocumentsView(QWidget):
    def __init__(self, client: Callable[[], EngineClient | None]) -> None:
        super().__init__()
        self.client = client
        self.setAcceptDrops(True)
        self.rows: dict[str, int] = {}  # path -> its row in the progress table
        self.cancel = threading.Event()
        self.indexing = False
        self.answer_text = ""
        self.citations: list[str] = []
        self.passages: list[dict[str, Any]] = []  # the hits behind the citations, for the passage panel
        self.select: str | None = None

        self.name = QLineEdit(DEFAULT_COLLECTION)
        self.collections = QListWidget()
        self.collections.currentTextChanged.connect(lambda chosen: self.name.setText(chosen) if chosen else None)
        self.name.setToolTip("the collection that files added now join (letters, digits, '.', '_' or '-')")
        add_btn, self.stop_btn = QPushButton("Add folder…"), QPushButton("Stop")
        add_btn.clicked.connect(self._choose)
        self.stop_btn.clicked.connect(lambda: self.cancel.set())  # the current indexing's event
        self.stop_btn.setEnabled(False)
        left = QVBoxLayout()
        left.addWidget(QLabel("Collections"))
        left.addWidget(self.collections, 1)
        left.addWidget(QLabel("Add to collection"))
        left.addWidget(self.name)
        row = QHBoxLayout()
        row.addWidget(add_btn)
        row.addWidget(self.stop_btn)
        left.addLayout(row)
        left.addWidget(QLabel("or drop files and folders here"))

        self.progress = QTableWidget(0, 2)
        self.progress.setHorizontalHeaderLabels(["File", "Status"])
        self.progress.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.progress.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.status = QLabel(wordWrap=True)
        self.question = QLineEdit(placeholderText="Ask the selected collection a question")
        self.question.returnPressed.connect(self.ask)
        self.ask_btn = QPushButton("Ask")
        self.ask_btn.clicked.connect(self.ask)
        self.answer = QTextBrowser(openLinks=False)
        self.answer.anchorClicked.connect(self._cited)
        self.passage = QPlainTextEdit(readOnly=True, placeholderText="Click a citation to read its passage")
        self.open_btn = QPushButton("Open file")
        self.open_btn.setEnabled(False)
        self.open_btn.clicked.connect(self._open_file)
        self.opened: str | None = None
        ask_row = QHBoxLayout()
        ask_row.addWidget(self.question, 1)
        ask_row.addWidget(self.ask_btn)
        right = QVBoxLayout()
        right.addWidget(self.progress, 2)
        right.addWidget(self.status)
        right.addLayout(ask_row)
        right.addWidget(self.answer, 2)
        right.addWidget(self.passage, 1)
        right.addWidget(self.open_btn, 0, Qt.AlignmentFlag.AlignRight)

        two_panes(self, left, right)

    # --- collections --------------------------------------------------------------------------
    def refresh(self, select: str | None = None) -> None:
        """The collections from the engine; ``select`` (one just indexed) becomes the current one."""
        self.select = select
        client = self.client()
        if client is not None:
            in_background(client.collections, self._listed, self.status.setText, name="docs-list")

    def _listed(self, rows: list[dict[str, Any]]) -> None:
        current = self.collections.currentItem()
        chosen = self.select or (current.text() if current is not None else self.name.text())
        self.collections.clear()
        for row in rows:
            self.collections.addItem(row["name"])
            item = self.collections.item(self.collections.count() - 1)
            item.setToolTip(f"{row['files']} files, {row['chunks']} chunks; {', '.join(row['roots'])}")
            if row["name"] == chosen:
                self.collections.setCurrentItem(item)

    # --- adding -------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt's name
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt's name
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.add_paths(paths)

    def _choose(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder to the collection")
        if folder:
            self.add_paths([folder])

    def add_paths(self, paths: list[str]) -> None:
        """Index ``paths`` into the collection named in the box; each file's fate shows as it comes."""
        client = self.client()
        if client is None or self.indexing:
            self.status.setText("the engine is not running" if client is None else "already indexing: wait or Stop")
            return
        collection = self.name.text().strip() or DEFAULT_COLLECTION
        self.cancel = threading.Event()
        self.indexing = True
        self.stop_btn.setEnabled(True)
        self.progress.setRowCount(0)
        self.rows.clear()
        self.status.setText(f"indexing into {collection}…")
        cancel = self.cancel

        def work() -> dict[str, Any]:
            done: dict[str, Any] = {}
            for event in client.index_documents(collection, paths, cancel):
                if "done" in event:
                    done = event["done"]
                else:
                    on_ui(partial(self._file, event["path"], event["what"]))
            return done

        in_background(work, partial(self._indexed, collection), self._failed, name="docs-add")

    def _file(self, path: str, what: str) -> None:
        row = self.rows.get(path)
        if row is None:
            row = self.rows[path] = self.progress.rowCount()
            self.progress.insertRow(row)
            self.progress.setItem(row, 0, QTableWidgetItem(path))
        self.progress.setItem(row, 1, QTableWidgetItem(what))
        self.progress.scrollToBottom()

    def _indexed(self, collection: str, done: dict[str, Any]) -> None:
        self.indexing = False
        self.stop_btn.setEnabled(False)
        stopped = " (stopped)" if done.get("cancelled") else ""
        self.status.setText(f"{collection}: {done.get('indexed', 0)} file(s) indexed ({done.get('chunks', 0)} chunks), "
                            f"{done.get('unchanged', 0)} unchanged, {done.get('removed', 0)} removed, "
                            f"{done.get('skipped', 0)} skipped{stopped}")
        self.refresh(select=collection)  # what the user just added is what they will ask

    def _failed(self, message: str) -> None:
        self.indexing = False
        self.stop_btn.setEnabled(False)
        self.status.setText(f"⚠ {message}")

    # --- asking -------------------------------------------------------------------------------
    def ask(self) -> None:
        client, question = self.client(), self.question.text().strip()
        item = self.collections.currentItem()
        collection = item.text() if item is not None else self.name.text().strip()
        if client is None or not question or not collection:
            return
        self.answer_text, self.citations, self.passages = "", [], []
        self.ask_btn.setEnabled(False)
        self.answer.setPlainText("…")

        def work() -> None:
            for piece in client.ask_documents(question, collection, max_tokens=400):
                on_ui(partial(self._piece, piece))

        in_background(work, lambda _: self._answered(), self._ask_failed, name="docs-ask")

    def _piece(self, piece: str | dict[str, Any]) -> None:
        if isinstance(piece, dict):  # the sources come first
            self.citations, self.passages = piece["citations"], piece["passages"]
        else:
            self.answer_text += piece
        self._show()

    def _show(self) -> None:
        links = "".join(f'<br><a href="{CITE_SCHEME}:{n}">{html.escape(c)}</a>' for n, c in enumerate(self.citations))
        self.answer.setHtml(f"<p>{html.escape(self.answer_text)}</p><p><b>Sources</b>{links}</p>"
                            if self.citations else f"<p>{html.escape(self.answer_text)}</p>")

    def _answered(self) -> None:
        self.ask_btn.setEnabled(True)
        self._show()

    def _ask_failed(self, message: str) -> None:
        self.ask_btn.setEnabled(True)
        self.answer.setPlainText(f"⚠ {message}")

    def _cited(self, url: QUrl) -> None:
        """A citation's passage in the panel below the answer (and its file one click away)."""
        if url.scheme() != CITE_SCHEME or not url.path().isdigit():
            return
        n = int(url.path())
        if n < len(self.passages):
            hit = self.passages[n]
            where = hit["path"] + (f", page {hit['page']}" if hit.get("page") is not None else "")
            self.passage.setPlainText(f"{where}\n{hit.get('heading') or ''}\n\n{hit['text']}")
            self.opened = hit["path"]
            self.open_btn.setEnabled(Path(hit["path"]).exists())

    def _open_file(self) -> None:
        if self.opened:
            QDesktopServices.openUrl(QUrl.fromLocalFile(self.opened))
