"""Device view: what the engine found (hardware, kernel self-test) and what it planned, with the
reason for each choice; overrides for threads, context and GPU layers restart the engine child with them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from autoglm.app.engine_process import EngineClient
from autoglm.app.views import fetch
from autoglm.app.widgets import planned_spin


class DeviceView(QWidget):
    apply_requested = Signal(object, object, object)  # threads, ctx, GPU layers (-1 all); None: as planned

    def __init__(self, client: Callable[[], EngineClient | None]) -> None:
        super().__init__()
        self.client = client
        self.summary = QFormLayout()
        self.reasons = QTableWidget(0, 3)
        self.reasons.setHorizontalHeaderLabels(["Setting", "Value", "Why"])
        self.reasons.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.measured = QTableWidget(0, 4)  # what `autoglm tune` (or the idle engine) measured
        self.measured.setHorizontalHeaderLabels(["Measured", "Settings", "Prefill tok/s", "Decode tok/s"])
        self.measured.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.measured_note = QLabel(wordWrap=True)
        self.threads = planned_spin(0, 256)
        self.ctx = planned_spin(0, 262144, step=512)
        # -2 shows "planned", -1 means every layer; the tooltip says so
        self.gpu_layers = planned_spin(-2, 999, tip="-1 offloads every layer, 0 keeps the model on the CPU")
        apply_btn = QPushButton("Apply (restarts the engine)")
        apply_btn.clicked.connect(self.apply)
        self.status = QLabel()
        overrides = QHBoxLayout()
        overrides.addWidget(QLabel("Threads"))
        overrides.addWidget(self.threads)
        overrides.addWidget(QLabel("Context per sequence"))
        overrides.addWidget(self.ctx)
        overrides.addWidget(QLabel("GPU layers"))
        overrides.addWidget(self.gpu_layers)
        overrides.addWidget(apply_btn)
        layout = QVBoxLayout(self)
        layout.addLayout(self.summary)
        layout.addWidget(self.reasons, 1)
        layout.addWidget(self.measured_note)
        layout.addWidget(self.measured)
        layout.addLayout(overrides)
        layout.addWidget(self.status)

    def apply(self) -> None:
        layers = self.gpu_layers.value()
        self.apply_requested.emit(self.threads.value() or None, self.ctx.value() or None,
                                  None if layers == -2 else layers)

    def refresh(self) -> None:
        fetch(self.client, EngineClient.device, self.status, self._show)

    def _show(self, report: dict[str, Any]) -> None:
        while self.summary.rowCount():
            self.summary.removeRow(0)
        dev, cpu = report["device"], report["device"]["cpu"]
        gpus = ", ".join(f"{g['name']} ({g['memory_total'] / 2**30:.1f} GiB)" for g in dev.get("gpus", [])) or "none"
        selftest = report.get("selftest") or {}
        for label, value in (
            ("CPU", f"{cpu['model']} ({cpu['physical_cores']} physical / {cpu['logical_cores']} logical cores)"),
            ("RAM", f"{dev['ram_total'] / 2**30:.1f} GiB, {dev['ram_available'] / 2**30:.1f} GiB free"),
            ("GPUs", gpus),
            ("AMX", "yes" if report.get("amx") else "no"),
            ("llama.cpp", f"{dev.get('llama_cpp_version') or 'not installed'}, " + (
                f"portable: '{dev.get('llama_cpu_variant')}' kernels chosen of {len(dev['llama_cpu_variants'])} "
                "CPU variants" if dev.get("llama_cpu_variants") else "built for this CPU")),
            ("Model", report["model"]["label"]),
            ("Kernel self-test", f"{selftest.get('config', '-')}: {selftest.get('outcome', 'not run (safe mode)')}"),
            ("GPU self-test", (lambda g: f"{g['outcome']}" + (f" ({g['detail']})" if g.get("detail") else ""))(
                report["gpu_selftest"]) if report.get("gpu_selftest") else "not needed (no layer planned on a GPU)"),
            ("Determinism", report.get("determinism", "")),
            ("Serving", f"{report['serving']['parallel']} sequences x {report['serving']['ctx']} tokens, "
                        f"flash attention {'on' if report['serving'].get('flash_attn') else 'off'} (batched)"),
        ):
            self.summary.addRow(label, QLabel(value, wordWrap=True))
        plan = report["plan"]
        reasons = plan.get("reasons", {})
        self.reasons.setRowCount(len(reasons))
        for r, (key, why) in enumerate(reasons.items()):
            for c, text in enumerate((key, str(plan.get(key, "")), why)):
                self.reasons.setItem(r, c, QTableWidgetItem(text))
        self._show_measured(report.get("tuned"))
        self.status.setText("")

    def _show_measured(self, tuned: dict[str, Any] | None) -> None:
        rows = measured_rows(tuned) if tuned else []
        self.measured.setVisible(bool(rows))
        self.measured_note.setText(
            f"Measured on this device: {len(tuned['trials'])} settings in {tuned['seconds']:.0f} s; the plan above "
            "uses the fastest (busy: with another program taking a core)" if tuned and rows else
            "Settings not measured yet: the engine measures them once it has been idle for a while "
            "(or run `autoglm tune`); the plan above follows the rules meanwhile")
        self.measured.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.measured.setItem(r, c, QTableWidgetItem(text))


def _label(config: dict[str, Any]) -> str:
    return (f"{config['threads']} threads (prefill {config['threads_batch']}), flash attention "
            f"{'on' if config['flash_attn'] else 'off'}, KV {config['kv_type']}, micro-batch {config['n_ubatch']}, "
            f"repack {'on' if config['extra_bufts'] else 'off'}, waiting {config['wait']}")


def measured_rows(tuned: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The doctor's table, from the engine's JSON (the window reaches the engine only over HTTP)."""
    def speed(s: dict[str, Any]) -> tuple[str, str]:
        return f"{s['prefill']:.0f}", f"{s['decode']:.1f}"

    rows = [("rules (planner)", _label(tuned["trials"][0]["config"]), *speed(tuned["base"])),
            ("measured best", _label(tuned["idle"]), *speed(tuned["best"]))]
    if tuned.get("busy") and tuned.get("busy_base") and tuned.get("busy_best"):
        rows += [("busy: same threads", _label(tuned["idle"]), *speed(tuned["busy_base"])),
                 ("busy: measured", _label(tuned["busy"]), *speed(tuned["busy_best"]))]
    return rows
