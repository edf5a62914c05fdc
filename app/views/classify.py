"""Classify view: pick, define (zero-shot labels) or train (examples file) a classifier, classify
typed text or a file, see label, confidence and exit layer per text, export CSV. Work runs on a
thread; ``exact`` runs the full model so the early-exit gain is visible."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from autoglm.app.background import in_background
from autoglm.app.engine_process import EngineClient
from autoglm.app.views import fetch

ZERO_SHOT = "(zero-shot: the labels below)"


class ClassifyView(QWidget):
    done = Signal()

    def __init__(self, client: Callable[[], EngineClient | None]) -> None:
        super().__init__()
        self.client = client
        self.select_after: str | None = None
        self.texts: list[str] = []

        self.picker = QComboBox()
        self.labels = QLineEdit(placeholderText="labels: sports, politics=elections and parliament, tech")
        self.name = QLineEdit(placeholderText="name for a new classifier")
        save_btn, train_btn = QPushButton("Save labels as classifier"), QPushButton("Train from examples file…")
        save_btn.clicked.connect(self.save_zero_shot)
        train_btn.clicked.connect(self.train_from_file)
        self.input = QPlainTextEdit(placeholderText="One text per line")
        self.input.setMaximumHeight(120)
        self.exact = QCheckBox("Exact (no early exit, no pruning)")
        classify_btn, file_btn, export_btn = QPushButton("Classify"), QPushButton("Classify file…"), \
            QPushButton("Export CSV…")
        classify_btn.clicked.connect(lambda: self.classify(self.input.toPlainText().splitlines()))
        file_btn.clicked.connect(self.classify_file)
        export_btn.clicked.connect(self.export_csv)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Text", "Label", "Confidence", "Exit layer"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.status = QLabel()

        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel("Classifier:"))
        top.addWidget(self.picker, 1)
        layout.addLayout(top)
        layout.addWidget(self.labels)
        make = QHBoxLayout()
        make.addWidget(self.name, 1)
        make.addWidget(save_btn)
        make.addWidget(train_btn)
        layout.addLayout(make)
        layout.addWidget(self.input)
        run = QHBoxLayout()
        for w in (classify_btn, file_btn, self.exact, export_btn):
            run.addWidget(w)
        layout.addLayout(run)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)

    def refresh(self, then: Callable[[], Any] | None = None) -> None:
        """Ask the engine for its classifiers; the picker fills when it answers, then ``then()`` runs."""
        fetch(self.client, "/autoglm/models", self.status, self._listed, then)

    def _listed(self, reply: dict[str, Any]) -> None:
        current = self.picker.currentText()
        self.picker.clear()
        self.picker.addItem(ZERO_SHOT)
        names = [m["name"] for m in reply["data"] if m["format"] == "classifier"]
        self.picker.addItems(names)
        wanted = self.select_after or current
        self.select_after = None
        if wanted in names:
            self.picker.setCurrentText(wanted)

    def _labels(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for part in self.labels.text().split(","):
            name, _, desc = part.partition("=")
            if name.strip():
                out[name.strip()] = desc.strip() or None
        return out

    def _run(self, work: Callable[[EngineClient], Any], on_done: Callable[[Any], Any]) -> None:
        client = self.client()
        if client is None:
            self._failed("the engine is not running")
            return
        self.status.setText("working…")
        in_background(lambda: work(client), on_done, self._failed, name="classify")

    def classify(self, texts: list[str]) -> None:
        texts = [t.strip() for t in texts if t.strip()]
        if not texts:
            self._failed("type a text (one per line) or pick a file")
            return
        body: dict[str, Any] = {"input": texts, "exact": self.exact.isChecked()}
        if self.picker.currentText() in ("", ZERO_SHOT):
            labels = list(self._labels())
            if len(labels) < 2:
                self._failed("give at least two labels, or pick a classifier")
                return
            body["labels"] = labels
        else:
            body["model"] = self.picker.currentText()
        self.texts = texts

        def work(client: EngineClient) -> tuple[list[dict], float]:
            started = time.perf_counter()
            return client.post("/v1/classify", body)["data"], time.perf_counter() - started

        self._run(work, lambda result: self._show(*result))

    def classify_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Texts, one per line", "", "Text (*.txt);;All (*)")
        if path:
            with open(path, encoding="utf-8", errors="replace") as fh:
                self.classify(fh.read().splitlines())

    def save_zero_shot(self) -> None:
        labels, name = self._labels(), self.name.text().strip()
        if len(labels) < 2 or not name:
            self._failed("give a name and at least two labels")
            return
        self._train({"name": name, "labels": labels})

    def train_from_file(self, path: str | None = None) -> None:
        name = self.name.text().strip()
        if not name:
            self._failed("give the new classifier a name first")
            return
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, "Examples (text,label)", "", "CSV or JSONL (*.csv *.jsonl)")
        if not path:
            return
        try:
            with open(path, encoding="utf-8") as fh:
                content = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            self._failed(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
            return
        # the engine parses it (one parser for the CLI, the server and the window) and says what is wrong
        self._train({"name": name, "examples_file": {"name": os.path.basename(path), "content": content}})

    def _train(self, body: dict[str, Any]) -> None:
        self._run(lambda client: client.post("/autoglm/classifiers", body), lambda _: self._trained(body["name"]))

    def _trained(self, name: str) -> None:
        self.select_after = name  # once the refreshed list holds it
        self.status.setText(f"saved classifier {name}")
        self.refresh(then=self.done.emit)

    def _show(self, rows: list[dict], seconds: float) -> None:
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate((self.texts[row["index"]], row["label"], f"{row['confidence']:.3f}",
                                       str(row["exit_layer"]))):
                self.table.setItem(r, c, QTableWidgetItem(value))
        mode = "exact" if self.exact.isChecked() else "early exit"
        self.status.setText(f"{len(rows)} text(s) in {seconds * 1000:.0f} ms ({mode})")
        self.done.emit()

    def _failed(self, message: str) -> None:
        self.status.setText(f"⚠ {message}")
        self.done.emit()

    def export_csv(self, path: str | None = None) -> None:
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Export results", "results.csv", "CSV (*.csv)")
        if not path:
            return
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label", "confidence", "exit_layer"])
            for r in range(self.table.rowCount()):
                writer.writerow([self.table.item(r, c).text() for c in range(4)])
        self.status.setText(f"exported {self.table.rowCount()} row(s) to {path}")
