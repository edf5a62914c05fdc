"""Extract view: a JSON schema (edited, or one of the ready examples), texts typed or from a file,
and a table with one row per text and a column per top-level field; export as JSON lines or CSV.

The engine checks the schema and the answers (``/v1/extract``): the view only shows what it says,
so a broken schema is the engine's one line, the same as in the CLI."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from autoglm.app.background import in_background
from autoglm.app.engine_process import EngineClient

CHUNK = 64  # the server's most inputs per request
EXAMPLES: dict[str, dict[str, Any]] = {
    "Person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 60}, "age": {"type": "integer"},
        "city": {"type": "string", "maxLength": 60}}, "required": ["name", "age", "city"]},
    "News article": {"type": "object", "properties": {
        "category": {"enum": ["business", "entertainment", "politics", "sport", "tech"]},
        "people": {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 4},
        "headline": {"type": "string", "maxLength": 100}}, "required": ["category", "people", "headline"]},
    "Invoice": {"type": "object", "properties": {
        "vendor": {"type": "string", "maxLength": 80}, "total": {"type": "number"},
        "currency": {"enum": ["EUR", "USD", "GBP", "other"]}, "date": {"type": "string", "maxLength": 20}},
        "required": ["vendor", "total", "currency"]},
}


class ExtractView(QWidget):
    done = Signal()

    def __init__(self, client: Callable[[], EngineClient | None]) -> None:
        super().__init__()
        self.client = client
        self.results: list[dict[str, Any]] = []
        self.texts: list[str] = []
        self.columns: list[str] = []

        self.example = QComboBox()
        self.example.addItems(list(EXAMPLES))
        self.example.currentTextChanged.connect(self.use_example)
        self.schema = QPlainTextEdit()
        self.schema.setPlaceholderText("a JSON schema of an object")
        self.input = QPlainTextEdit(placeholderText="One text per line")
        run_btn, file_btn = QPushButton("Extract"), QPushButton("Extract file…")
        jsonl_btn, csv_btn = QPushButton("Export JSONL…"), QPushButton("Export CSV…")
        run_btn.clicked.connect(lambda: self.extract(self.input.toPlainText().splitlines()))
        file_btn.clicked.connect(self.extract_file)
        jsonl_btn.clicked.connect(lambda: self.export_jsonl())
        csv_btn.clicked.connect(lambda: self.export_csv())
        self.table = QTableWidget(0, 1)
        self.table.setHorizontalHeaderLabels(["Text"])
        self.status = QLabel()

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        pick = QHBoxLayout()
        pick.addWidget(QLabel("Schema:"))
        pick.addWidget(self.example, 1)
        left_layout.addLayout(pick)
        left_layout.addWidget(self.schema, 1)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.input, 1)
        buttons = QHBoxLayout()
        for w in (run_btn, file_btn, jsonl_btn, csv_btn):
            buttons.addWidget(w)
        right_layout.addLayout(buttons)
        top = QSplitter()
        top.addWidget(left)
        top.addWidget(right)
        layout = QVBoxLayout(self)
        layout.addWidget(top, 1)
        layout.addWidget(self.table, 2)
        layout.addWidget(self.status)
        self.use_example(self.example.currentText())

    def use_example(self, name: str) -> None:
        self.schema.setPlainText(json.dumps(EXAMPLES[name], indent=2))

    def _schema(self) -> dict[str, Any] | None:
        try:
            schema = json.loads(self.schema.toPlainText())
        except json.JSONDecodeError as exc:
            self._failed(f"the schema is not JSON: {exc.msg} at line {exc.lineno}")
            return None
        return schema

    def extract(self, texts: list[str]) -> None:
        texts = [t.strip() for t in texts if t.strip()]
        schema = self._schema()
        if schema is None:
            return
        if not texts:
            self._failed("type a text (one per line) or pick a file")
            return
        client = self.client()
        if client is None:
            self._failed("the engine is not running")
            return
        self.texts = texts
        self.status.setText(f"extracting {len(texts)} text(s)…")

        def work() -> tuple[list[dict[str, Any]], float]:
            started, rows = time.perf_counter(), []
            for i in range(0, len(texts), CHUNK):
                body = {"schema": schema, "input": texts[i:i + CHUNK]}
                rows += client.extract(body)
            return rows, time.perf_counter() - started

        in_background(work, lambda result: self._show(schema, *result), self._failed, name="extract")

    def extract_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Texts, one per line", "", "Text (*.txt);;All (*)")
        if path:
            with open(path, encoding="utf-8", errors="replace") as fh:
                self.extract(fh.read().splitlines())

    def _show(self, schema: dict[str, Any], rows: list[dict[str, Any]], seconds: float) -> None:
        self.results = rows
        self.columns = list(schema.get("properties", {})) or ["object"]
        headers = ["Text", *self.columns, "Error"]
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = [self.texts[r], *self._cells(row["object"]), row["error"] or ""]
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                if row["error"]:
                    item.setBackground(QColor("#f6d7d5"))
                self.table.setItem(r, c, item)
        failed = sum(1 for row in rows if row["error"])
        self.status.setText(f"{len(rows)} text(s) in {seconds:.1f}s" + (f", {failed} without an object" if failed
                                                                          else ""))
        self.done.emit()

    def _cells(self, obj: dict[str, Any] | None) -> list[str]:
        if obj is None:
            return [""] * len(self.columns)
        if self.columns == ["object"]:
            return [json.dumps(obj, ensure_ascii=False)]
        return [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                for v in (obj.get(k, "") for k in self.columns)]

    def _failed(self, message: str) -> None:
        self.status.setText(f"⚠ {message}")
        self.done.emit()

    def export_jsonl(self, path: str | None = None) -> None:
        """One object per text, in order; ``null`` where none was extracted (as the CLI writes)."""
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Export objects", "extracted.jsonl", "JSON lines (*.jsonl)")
        if path:
            with open(path, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(row["object"], ensure_ascii=False) + "\n" for row in self.results)
            self.status.setText(f"exported {len(self.results)} line(s) to {path}")

    def export_csv(self, path: str | None = None) -> None:
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Export table", "extracted.csv", "CSV (*.csv)")
        if path:
            with open(path, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["text", *self.columns, "error"])
                for text, row in zip(self.texts, self.results, strict=True):
                    writer.writerow([text, *self._cells(row["object"]), row["error"] or ""])
            self.status.setText(f"exported {len(self.results)} row(s) to {path}")
