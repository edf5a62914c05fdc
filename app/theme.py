"""Light and dark themes: the OS's choice by default (and when the OS switches), or the user's.

Qt's Fusion style with a palette of our own looks the same on every platform and honours both
palettes fully (the native styles of some platforms ignore a dark palette). The transcript's HTML
and the charts take their colours from ``is_dark()``, so they switch with the rest.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

MODES = ("system", "light", "dark")

_DARK = {
    QPalette.ColorRole.Window: "#232323", QPalette.ColorRole.WindowText: "#e6e6e6",
    QPalette.ColorRole.Base: "#1b1b1b", QPalette.ColorRole.AlternateBase: "#262626",
    QPalette.ColorRole.Text: "#e6e6e6", QPalette.ColorRole.Button: "#2e2e2e",
    QPalette.ColorRole.ButtonText: "#e6e6e6", QPalette.ColorRole.Highlight: "#3a6fb0",
    QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#2e2e2e",
    QPalette.ColorRole.ToolTipText: "#e6e6e6", QPalette.ColorRole.PlaceholderText: "#8a8a8a",
    QPalette.ColorRole.Link: "#78aeed", QPalette.ColorRole.BrightText: "#ff6b6b",
}


def system_prefers_dark() -> bool:
    hints = QGuiApplication.styleHints()
    scheme = getattr(hints, "colorScheme", None)  # Qt 6.5+
    if scheme is not None:
        return scheme() == Qt.ColorScheme.Dark
    return False


def resolve(mode: str) -> bool:
    """Whether ``mode`` means dark on this machine now."""
    return system_prefers_dark() if mode == "system" else mode == "dark"


def apply(app: QApplication, mode: str) -> bool:
    """Set the palette for ``mode``; returns whether it is dark."""
    dark = resolve(mode)
    app.setStyle("Fusion")
    palette = app.style().standardPalette()
    if dark:
        for role, color in _DARK.items():
            palette.setColor(role, QColor(color))
        palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#6d6d6d"))
        palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#6d6d6d"))
    app.setPalette(palette)
    app.setProperty("autoglm_dark", dark)
    return dark


def is_dark() -> bool:
    app = QApplication.instance()
    return bool(app.property("autoglm_dark")) if app is not None else False
