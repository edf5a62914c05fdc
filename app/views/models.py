"""Models view: what the engine's store holds (name, version, format, quant, size, source)."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QHeaderView, QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from app.engine_process import EngineClient, EngineError

COLUMNS = ("name", "version", "format", "quant", "size", "source")


class ModelsView(QWidget):
    def __init__(self, client: Callable[[], EngineClient | None]) -> None:
        super().__init__()
        self.client = client
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c.title() for c in COLUMNS])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.status = QLabel()
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        layout.addWidget(refresh)

    def refresh(self) -> None:
        client = self.client()
        if client is None:
            self.status.setText("the engine is not running")
            return
        try:
            rows = client.get("/autoglm/models")["data"]
        except EngineError as exc:
            self.status.setText(str(exc))
            return
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(COLUMNS):
                value = f"{row[key] / 1e6:.0f} MB" if key == "size" else str(row[key])
                self.table.setItem(r, c, QTableWidgetItem(value))
        self.status.setText(f"{len(rows)} model(s) installed")
