"""Classify view: pick, define (zero-shot labels) or train (examples file) a classifier, classify
typed text or a file, see label, confidence and exit layer per text, export CSV. Work runs on a
thread; ``exact`` runs the full model so the early-exit gain is visible.

With a trained classifier each label is a drop-down: results the engine marks for review are
highlighted, a user fixes the wrong ones and saves the corrections, and the classifier retrains
from them as a new version (the Models view rolls it back)."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QColor
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
from autoglm.app.widgets import cell_text

ZERO_SHOT = "(zero-shot: the labels below)"
REVIEW_COLOR = "#fff1c2"  # unsure results: a person should check them


class ClassifyView(QWidget):
    done = Signal()
    measured = Signal(int, float)  # texts, seconds: the performance view's classify chart

    def __init__(self, client: Callable[[], EngineClient | None]) -> None:
        super().__init__()
        self.client = client
        self.select_after: str | None = None
        self.texts: list[str] = []
        self.predicted: list[str] = []
        self.shown_classifier: str | None = None  # the stored classifier the table's results came from

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
        self.correct_btn = QPushButton("Save corrections")
        self.correct_btn.setToolTip("Retrain the classifier with the labels you changed (a new version)")
        self.correct_btn.setEnabled(False)
        self.correct_btn.clicked.connect(self.save_corrections)
        classify_btn.clicked.connect(lambda: self.classify(self.input.toPlainText().splitlines()))
        file_btn.clicked.connect(self.classify_file)
        export_btn.clicked.connect(self.export_csv)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Text", "Label", "Confidence", "Exit layer", "Review"])
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
        for w in (classify_btn, file_btn, self.exact, export_btn, self.correct_btn):
            run.addWidget(w)
        layout.addLayout(run)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)

    def refresh(self, then: Callable[[], Any] | None = None) -> None:
        """Ask the engine for its classifiers; the picker fills when it answers, then ``then()`` runs."""
        fetch(self.client, EngineClient.models, self.status, self._listed, then)

    def _listed(self, reply: dict[str, Any]) -> None:
        current = self.picker.currentText()
        self.picker.clear()
        self.picker.addItem(ZERO_SHOT)
        names = [m["name"] for m in reply["data"] if m["format"] in ("classifier", "prompt")]
        self.picker.addItems(names)
        routed = reply.get("routes", {}).get("classify")  # the task router's classifier, on first show
        wanted = self.select_after or (current if current not in ("", ZERO_SHOT) else routed) or current
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

        def work(client: EngineClient) -> tuple[dict[str, Any], float]:
            started = time.perf_counter()
            return client.classify(body), time.perf_counter() - started

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
        self._run(lambda client: client.train_classifier(body), lambda _: self._trained(body["name"]))

    def _trained(self, name: str) -> None:
        self.select_after = name  # once the refreshed list holds it
        self.status.setText(f"saved classifier {name}")
        self.refresh(then=self.done.emit)

    def _show(self, reply: dict[str, Any], seconds: float) -> None:
        rows = reply["data"]
        stored = self.picker.currentText() not in ("", ZERO_SHOT) and bool(reply.get("correctable"))
        self.shown_classifier = self.picker.currentText() if stored else None
        self.predicted = [row["label"] for row in rows]
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            review = "check" if row.get("review") else ""
            confidence = "—" if row["confidence"] is None else f"{row['confidence']:.3f}"  # a prompt measures none
            for c, value in enumerate((self.texts[row["index"]], row["label"], confidence,
                                       str(row["exit_layer"]), review)):
                item = QTableWidgetItem(value)
                if review:
                    item.setBackground(QColor(REVIEW_COLOR))
                self.table.setItem(r, c, item)
            if stored:  # a drop-down to correct the label with
                pick = QComboBox()
                pick.addItems(reply.get("labels") or [row["label"]])
                pick.setCurrentText(row["label"])
                pick.currentTextChanged.connect(self._corrections_changed)
                self.table.setCellWidget(r, 1, pick)
        self.correct_btn.setEnabled(False)
        self.measured.emit(len(rows), seconds)
        marked = sum(1 for row in rows if row.get("review"))
        mode = "exact" if self.exact.isChecked() else "early exit"
        self.status.setText(f"{len(rows)} text(s) in {seconds * 1000:.0f} ms ({mode})"
                            + (f"; {marked} marked for review" if marked else ""))
        self.done.emit()

    def label_at(self, row: int) -> str:
        pick = self.table.cellWidget(row, 1)
        return pick.currentText() if isinstance(pick, QComboBox) else cell_text(self.table, row, 1)

    def corrections(self) -> list[dict[str, str]]:
        return [{"text": cell_text(self.table, r, 0), "label": self.label_at(r)}
                for r in range(self.table.rowCount()) if self.label_at(r) != self.predicted[r]]

    def _corrections_changed(self) -> None:
        count = len(self.corrections())
        self.correct_btn.setEnabled(count > 0)
        self.correct_btn.setText(f"Save {count} correction(s)" if count else "Save corrections")

    def save_corrections(self) -> None:
        fixes, name = self.corrections(), self.shown_classifier
        if not fixes or not name:
            self._failed("change a label in the table first (trained classifiers only)")
            return

        def saved(reply: dict[str, Any]) -> None:
            self.predicted = [self.label_at(r) for r in range(self.table.rowCount())]
            self._corrections_changed()
            self.status.setText(f"retrained {name} with {len(fixes)} correction(s) as version {reply['version']} "
                                f"in {reply['seconds']:.1f}s (Models → Roll back undoes it)")
            self.done.emit()

        self._run(lambda client: client.correct(name, fixes),
                  saved)

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
            writer.writerow(["text", "label", "confidence", "exit_layer", "review"])
            for r in range(self.table.rowCount()):
                writer.writerow([cell_text(self.table, r, 0), self.label_at(r),
                                 *(cell_text(self.table, r, c) for c in (2, 3, 4))])
        self.status.setText(f"exported {self.table.rowCount()} row(s) to {path}")
