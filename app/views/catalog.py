"""Catalog view: models to discover, with size, quant, licence and, from the engine's planner,
whether each fits this device and the speed to expect here; a search of Hugging Face's GGUF repos
when online; Pull hands the source to the Models view, which shows the download's progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from autoglm.app.background import in_background
from autoglm.app.engine_process import EngineClient
from autoglm.app.views import fetch

COLUMNS = ["Model", "Kind", "Parameters", "Quant", "Size", "Licence", "This device", "Expected speed", "Installed"]


def megabytes(size: int, estimated: bool) -> str:
    text = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
    return f"≈ {text}" if estimated else text


class CatalogView(QWidget):
    pull_requested = Signal(str)  # a source: the Models view pulls it with a progress bar
    done = Signal()

    def __init__(self, client: Callable[[], EngineClient | None]) -> None:
        super().__init__()
        self.client = client
        self.sources: list[str] = []
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.doubleClicked.connect(lambda _index: self.pull_selected())
        self.search = QLineEdit(placeholderText="Search Hugging Face for GGUF models (needs a network)")
        self.search.returnPressed.connect(self.search_hub)
        search_btn, self.pull_btn = QPushButton("Search"), QPushButton("Pull selected")
        search_btn.clicked.connect(self.search_hub)
        self.pull_btn.clicked.connect(self.pull_selected)
        self.status = QLabel()
        self.status.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        top.addWidget(search_btn)
        top.addWidget(self.pull_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.status)

    def refresh(self) -> None:
        self.status.setText("measuring this device's speed…")
        fetch(self.client, EngineClient.catalog, self.status, self._listed)

    def _listed(self, reply: dict[str, Any]) -> None:
        ref = reply["reference"]
        self.table.setRowCount(0)
        self.sources = []
        for entry in reply["data"]:
            speed = f"≈ {entry['tokens_per_s']:g} tok/s" if entry["tokens_per_s"] is not None else "—"
            installed = megabytes(entry["disk"], False) + " on disk" if entry["installed"] else ""
            params = f"{entry['params'] / 1e9:.2g} B" if entry["params"] >= 1e9 else f"{entry['params'] / 1e6:.0f} M"
            cells = [entry["title"], entry["kind"], params, entry["quant"], megabytes(entry["size"],
                     entry["size_estimated"]), entry["license"], entry["fit"], speed, installed]
            self._add(entry["source"], cells, tips={0: entry["note"] or entry["source"], 7: entry["speed_basis"]},
                      good=entry["fits"])
        self.status.setText(f"Expected speeds scale {ref['model']}'s {ref['tokens_per_s']:g} tok/s, measured on "
                            "this device; sizes marked ≈ are estimates until a model is installed. Double-click or "
                            "Pull selected to install one.")
        self.done.emit()

    def _add(self, source: str, cells: list[str], tips: dict[int, str], good: bool | None) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        for col, text in enumerate(cells):
            item = QTableWidgetItem(text)
            if col in tips:
                item.setToolTip(tips[col])
            if col == 6 and good is not None:
                item.setForeground(QColor("#2e7d32" if good else "#c62828"))
            self.table.setItem(row, col, item)
        self.sources.append(source)

    def search_hub(self) -> None:
        client, query = self.client(), self.search.text().strip()
        if client is None or not query:
            self.status.setText("the engine is not running" if client is None else "type what to search for")
            return
        self.status.setText(f"searching Hugging Face for {query!r}…")

        def found(reply: dict[str, Any]) -> None:
            for hit in reply["data"]:
                self._add(hit["source"], [hit["title"], "gguf", "", "planned", "", "", "", "",
                                          f"{hit['downloads']} downloads"], tips={0: hit["source"]}, good=None)
            self.status.setText(f"{len(reply['data'])} repos found for {query!r}; the planner picks the quant "
                                "that fits this device when you pull one.")
            self.done.emit()

        def failed(message: str) -> None:
            self.status.setText(f"⚠ {message}")
            self.done.emit()

        in_background(lambda: client.catalog_search(query), found, failed,
                      name="catalog-search")

    def pull_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            self.status.setText("select a model to pull")
            return
        self.pull_requested.emit(self.sources[rows[0].row()])
