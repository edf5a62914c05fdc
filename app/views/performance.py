"""Performance view: tokens/s and time to first token of recent replies, drawn live (QPainter:
two small line charts do not need a plotting library)."""

from __future__ import annotations

from collections import deque

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

HISTORY = 60


class LineChart(QWidget):
    def __init__(self, title: str, unit: str, color: str) -> None:
        super().__init__()
        self.title, self.unit, self.color = title, unit, QColor(color)
        self.values: deque[float] = deque(maxlen=HISTORY)
        self.setMinimumHeight(160)

    def add(self, value: float) -> None:
        self.values.append(value)
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h, pad = self.width(), self.height(), 28
        p.fillRect(self.rect(), QColor("#ffffff"))
        p.setPen(QPen(QColor("#cccccc")))
        p.drawRect(pad, 8, w - pad - 8, h - pad - 8)
        top = max(self.values, default=1.0) * 1.15 or 1.0
        last = f"{self.values[-1]:.1f} {self.unit}" if self.values else "no requests yet"
        p.setPen(QColor("#333333"))
        p.drawText(pad + 6, 24, f"{self.title}: {last}  (max {top / 1.15:.1f})")
        if len(self.values) >= 2:
            step = (w - pad - 8) / (HISTORY - 1)
            pts = [QPointF(pad + i * step, h - pad - (v / top) * (h - pad - 16)) for i, v in enumerate(self.values)]
            p.setPen(QPen(self.color, 2))
            p.drawPolyline(pts)
        elif self.values:
            p.setBrush(self.color)
            p.drawEllipse(QPointF(pad + 4, h - pad - (self.values[0] / top) * (h - pad - 16)), 3, 3)
        p.end()


class PerformanceView(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.rate = LineChart("Generation speed", "tok/s", "#2b7de9")
        self.ttft = LineChart("Time to first token", "ms", "#e9822b")
        self.summary = QLabel("Replies from the chat view appear here as they finish.",
                              alignment=Qt.AlignmentFlag.AlignLeft)
        layout = QVBoxLayout(self)
        layout.addWidget(self.rate)
        layout.addWidget(self.ttft)
        layout.addWidget(self.summary)
        self.count = 0

    def record(self, tokens: int, tokens_per_s: float, ttft_ms: float) -> None:
        self.count += 1
        self.rate.add(tokens_per_s)
        self.ttft.add(ttft_ms)
        self.summary.setText(f"{self.count} replies; last: {tokens} tokens, {tokens_per_s:.1f} tok/s, "
                             f"first token {ttft_ms:.0f} ms")
