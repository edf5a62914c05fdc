"""Performance view: generation speed and time to first token of recent chat replies, and the
classify view's throughput, drawn live over a chosen time window with axes and units (QPainter:
three small charts do not need a plotting library)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from autoglm.app.theme import is_dark

HISTORY = 2000  # points kept per chart; the window picks which are drawn
WINDOWS: dict[str, float | None] = {"Last 5 minutes": 300.0, "Last hour": 3600.0, "Everything": None}


def nice_top(value: float) -> float:
    """The axis maximum: 1, 2 or 5 times a power of ten, at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value * (1 - 1e-9))


def span_label(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.0f} min" if seconds >= 120 \
        else f"{seconds:.0f} s"


class LineChart(QWidget):
    """Values against time: the y axis in the chart's unit from 0 to a round maximum, the x axis
    from the window's start to now."""

    def __init__(self, title: str, unit: str, color: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.title, self.unit, self.color = title, unit, QColor(color)
        self.points: deque[tuple[float, float]] = deque(maxlen=HISTORY)
        self.span: float | None = WINDOWS["Last 5 minutes"]  # seconds shown; None: everything
        self.clock = clock
        self.setMinimumHeight(150)

    def add(self, value: float) -> None:
        self.points.append((self.clock(), value))
        self.update()

    def visible(self) -> list[tuple[float, float]]:
        now = self.clock()
        return [(t, v) for t, v in self.points if self.span is None or now - t <= self.span]

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt's name
        dark = is_dark()
        fg, grid, bg = (QColor("#dddddd"), QColor("#444444"), QColor("#1b1b1b")) if dark else \
            (QColor("#333333"), QColor("#dddddd"), QColor("#ffffff"))
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        left, right, top_pad, bottom = 52, 12, 26, 24
        w, h = self.width(), self.height()
        plot = QRectF(left, top_pad, max(10, w - left - right), max(10, h - top_pad - bottom))
        p.fillRect(self.rect(), bg)
        pts = self.visible()
        now = self.clock()
        start = now - self.span if self.span is not None else (pts[0][0] if pts else now - 60)
        span = max(now - start, 1.0)
        top = nice_top(max((v for _, v in pts), default=0.0) * 1.05)
        p.setPen(fg)
        last = f"last {pts[-1][1]:.1f}" if pts else "nothing measured in this window yet"
        p.drawText(QPointF(left, 17), f"{self.title} ({self.unit}): {last}")
        for i in range(5):  # y grid and labels: 0, 1/4 ... top
            y = plot.bottom() - plot.height() * i / 4
            p.setPen(QPen(grid, 1))
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(fg)
            p.drawText(QRectF(0, y - 8, left - 6, 16), int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                       f"{top * i / 4:g}")
        p.setPen(fg)
        p.drawText(QRectF(plot.left(), plot.bottom() + 4, 120, 16), int(Qt.AlignmentFlag.AlignLeft),
                   f"-{span_label(span)}")
        p.drawText(QRectF(plot.right() - 60, plot.bottom() + 4, 60, 16), int(Qt.AlignmentFlag.AlignRight), "now")
        xy = [QPointF(plot.left() + plot.width() * (t - start) / span, plot.bottom() - plot.height() * v / top)
              for t, v in pts]
        p.setPen(QPen(self.color, 2))
        if len(xy) >= 2:
            p.drawPolyline(xy)
        p.setBrush(self.color)
        for point in xy[-60:]:  # the points themselves: a reply is an event, not a continuous signal
            p.drawEllipse(point, 2.5, 2.5)
        p.end()


class PerformanceView(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.rate = LineChart("Generation speed", "tok/s", "#2b7de9")
        self.ttft = LineChart("Time to first token", "ms", "#e9822b")
        self.classify_rate = LineChart("Classify throughput", "texts/s", "#2ba84a")
        self.span_pick = QComboBox()
        self.span_pick.addItems(list(WINDOWS))
        self.span_pick.currentTextChanged.connect(self.set_window)
        self.summary = QLabel("Replies from the chat view and runs of the classify view appear here as they finish.",
                              alignment=Qt.AlignmentFlag.AlignLeft)
        top = QHBoxLayout()
        top.addWidget(QLabel("Window:"))
        top.addWidget(self.span_pick)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        for chart in (self.rate, self.ttft, self.classify_rate):
            layout.addWidget(chart)
        layout.addWidget(self.summary)
        self.count = 0

    def set_window(self, name: str) -> None:
        for chart in (self.rate, self.ttft, self.classify_rate):
            chart.span = WINDOWS[name]
            chart.update()

    def record(self, tokens: int, tokens_per_s: float, ttft_ms: float) -> None:
        self.count += 1
        self.rate.add(tokens_per_s)
        self.ttft.add(ttft_ms)
        self.summary.setText(f"{self.count} replies; last: {tokens} tokens, {tokens_per_s:.1f} tok/s, "
                             f"first token {ttft_ms:.0f} ms")

    def record_classify(self, texts: int, seconds: float) -> None:
        self.classify_rate.add(texts / seconds if seconds > 0 else 0.0)
