"""The window's own settings (theme, window state, engine options) in ``gui.ini`` in the data folder,
so ``AUTOGLM_HOME`` moves them with everything else; and the Settings dialog that edits them."""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QVBoxLayout,
    QWidget,
)

from autoglm.app.theme import MODES
from autoglm.app.widgets import planned_spin
from autoglm.engine import paths


def store() -> QSettings:
    return QSettings(str(paths.home() / "gui.ini"), QSettings.Format.IniFormat)


def theme_mode() -> str:
    mode = str(store().value("theme", "system"))
    return mode if mode in MODES else "system"


def _int(value: object, allow_zero: bool = False) -> int | None:
    """A stored number; None for "planned", for an empty value and for a hand-edited bad one."""
    try:
        number = int(str(value))  # QSettings hands back what was stored: an int, a str, or junk
    except ValueError:
        return None
    return number if number > 0 or (allow_zero and number == 0) else None


def engine_options() -> dict[str, int | bool | None]:
    s = store()
    return {"threads": _int(s.value("engine/threads")), "ctx": _int(s.value("engine/ctx")),
            "gpu_layers": _int(s.value("engine/gpu_layers"), allow_zero=True),
            "parallel": _int(s.value("engine/parallel")),
            "safe": str(s.value("engine/safe", "false")).lower() == "true"}


class SettingsDialog(QDialog):
    """Theme and the engine's options; 0 means "planned" (the planner chooses and says why)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        current = engine_options()
        self.theme = QComboBox()
        self.theme.addItems([m.capitalize() for m in MODES])
        self.theme.setCurrentIndex(MODES.index(theme_mode()))
        self.threads = planned_spin(0, 256, _int(current["threads"]))
        self.ctx = planned_spin(0, 1 << 17, _int(current["ctx"]), step=1024)
        self.gpu_layers = planned_spin(-1, 999, _int(current["gpu_layers"], allow_zero=True),
                                       tip="-1 (shown as planned): the planner decides; 0 keeps everything on the CPU")
        self.parallel = planned_spin(0, 64, _int(current["parallel"]))
        self.safe = QCheckBox("Safe mode (most conservative kernels, CPU only)")
        self.safe.setChecked(bool(current["safe"]))
        form = QFormLayout()
        form.addRow("Theme", self.theme)
        form.addRow("CPU threads", self.threads)
        form.addRow("Context (tokens)", self.ctx)
        form.addRow("GPU layers", self.gpu_layers)
        form.addRow("Parallel chats", self.parallel)
        form.addRow("", self.safe)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def save(self) -> tuple[str, bool]:
        """Store the choices; returns (theme mode, whether the engine options changed)."""
        s = store()
        before = engine_options()
        mode = MODES[self.theme.currentIndex()]
        s.setValue("theme", mode)
        s.setValue("engine/threads", self.threads.value() or "")
        s.setValue("engine/ctx", self.ctx.value() or "")
        s.setValue("engine/gpu_layers", "" if self.gpu_layers.value() == -1 else self.gpu_layers.value())
        s.setValue("engine/parallel", self.parallel.value() or "")
        s.setValue("engine/safe", "true" if self.safe.isChecked() else "false")
        s.sync()
        return mode, engine_options() != before
