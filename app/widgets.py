"""Small widgets more than one view builds the same way."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLayout, QSpinBox, QSplitter, QTableWidget, QVBoxLayout, QWidget


def planned_spin(minimum: int, maximum: int, value: int | None = None, step: int = 1, tip: str = "") -> QSpinBox:
    """A number box whose lowest value reads "planned": the engine's planner chooses and says why.
    Built with setters: PySide6 accepts Qt properties as keyword arguments at run time, but its type
    stubs do not, and mypy would then check nothing else about the call."""
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setSpecialValueText("planned")
    box.setValue(minimum if value is None else value)
    if tip:
        box.setToolTip(tip)
    return box


def cell_text(table: QTableWidget, row: int, column: int) -> str:
    """A table cell's text; an empty cell (no item) reads as empty text."""
    item = table.item(row, column)
    return item.text() if item is not None else ""


def two_panes(owner: QWidget, left: QLayout, right: QLayout) -> None:
    """``owner``'s layout: a narrow list on the left, the work on the right, the split movable."""
    split = QSplitter(Qt.Orientation.Horizontal)
    for side in (left, right):
        pane = QWidget()
        pane.setLayout(side)
        split.addWidget(pane)
    split.setSizes([220, 700])
    layout = QVBoxLayout(owner)
    layout.setContentsMargins(4, 4, 4, 4)
    layout.addWidget(split)
