"""The app icon, drawn with QPainter at every standard size, so it is sharp at any screen scale
(a single bitmap blurs at 150% and 200%) without shipping image files or Qt's SVG plugin."""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPixmap

SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def _draw(size: int) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor("#2b6fd6"))
    margin = size * 0.06
    box = QRectF(margin, margin, size - 2 * margin, size - 2 * margin)
    p.drawRoundedRect(box, size * 0.22, size * 0.22)
    p.setBrush(QColor("#ffffff"))  # a speech bubble's tail, bottom left
    p.drawEllipse(QRectF(size * 0.2, size * 0.62, size * 0.16, size * 0.16))
    font = QFont()
    font.setBold(True)
    font.setPixelSize(max(8, int(size * 0.5)))
    p.setFont(font)
    p.setPen(QColor("#ffffff"))
    p.drawText(box, int(Qt.AlignmentFlag.AlignCenter), "A")
    p.end()
    return pixmap


def app_icon() -> QIcon:
    icon = QIcon()
    for size in SIZES:
        icon.addPixmap(_draw(size))
    return icon
