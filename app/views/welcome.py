"""Welcome (first run): what this device can do, in plain words from the planner; the default
model's install with its progress (the engine child pulls it on its first start); a sample chat
and a sample classification one click away."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

GiB = 1 << 30
SAMPLE_CHAT = "In two sentences: what can a small language model running on my own computer do for me?"
SAMPLE_LABELS = "sports, politics=elections and parliament, technology"
SAMPLE_TEXTS = ["The striker scored twice in the cup final.", "Parliament votes on the new election law.",
                "The new phone has a faster chip and a better camera."]


def plain_words(report: dict[str, Any]) -> list[str]:
    """The device and the plan as sentences a non-specialist can read."""
    device, plan, model = report.get("device", {}), report.get("plan") or {}, report.get("model") or {}
    serving = report.get("serving") or {}  # what the running engine was started with, over the plan's defaults
    cpu = device.get("cpu", {})
    cores = cpu.get("physical_cores") or cpu.get("logical_cores") or "?"
    flags = {f.lower() for f in cpu.get("flags", [])}
    # the probe's normalised flag names (hardware.parse_cpuinfo), the ones the planner's kernels read
    simd = next((name for flag, name in (("amx", "AMX"), ("avx512", "AVX-512"), ("avx2", "AVX2"),
                                         ("neon", "NEON")) if flag in flags), None)
    lines = [f"Processor: {cpu.get('model') or 'unknown'}, {cores} cores" + (f" with {simd}" if simd else "")
             + f"; {device.get('ram_total', 0) / GiB:.0f} GB of memory."]
    gpus = device.get("gpus") or []
    if gpus:
        gpu = gpus[0]
        lines.append(f"Graphics: {gpu.get('name', 'a GPU')} with {gpu.get('memory_free', 0) / GiB:.0f} GB free.")
    else:
        lines.append("Graphics: no GPU this app can use; the processor does the work.")
    if model:
        where = (f"all {plan.get('gpu_layers')} layers on the GPU" if plan.get("gpu_layers") else
                 f"the processor, {plan.get('threads')} threads")
        size = f"{model.get('size', 0) / 1e6:.0f} MB, {model.get('quant', '?')}"
        lines.append(f"Model: {model.get('label', '?')} ({size}) runs on {where}, remembers up to "
                     f"{serving.get('ctx') or plan.get('n_ctx', '?')} tokens of a conversation and serves "
                     f"{serving.get('parallel') or plan.get('slots', '?')} "
                     "chats at once.")
    if plan.get("kernels"):
        lines.append(f"Kernels: {plan['kernels']}, checked in a separate process before first use.")
    return lines


class WelcomeView(QWidget):
    sample_chat = Signal()
    sample_classify = Signal()
    dismissed = Signal()

    def __init__(self, progress: Callable[[], tuple[str, int, int] | None]) -> None:
        super().__init__()
        self.progress_source = progress
        title = QLabel("<h2>Welcome to Open-AutoGLM</h2>"
                       "<p>Language models on this computer: nothing you type leaves it.</p>")
        self.device = QLabel("Looking at this device…", wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.install_label = QLabel("Starting the engine (the first start installs the default model)…")
        self.bar = QProgressBar()
        self.bar.setRange(0, 0)  # busy until a size is known
        self.chat_btn, self.classify_btn = QPushButton("Try a sample chat"), QPushButton("Try a sample classification")
        self.start_btn = QPushButton("Get started")
        for button in (self.chat_btn, self.classify_btn):
            button.setEnabled(False)
        self.chat_btn.clicked.connect(self.sample_chat.emit)
        self.classify_btn.clicked.connect(self.sample_classify.emit)
        self.start_btn.clicked.connect(self.dismissed.emit)
        buttons = QHBoxLayout()
        for button in (self.chat_btn, self.classify_btn):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.start_btn)
        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(QLabel("<b>What this device can do</b>"))
        layout.addWidget(self.device)
        layout.addWidget(QLabel("<b>The default model</b>"))
        layout.addWidget(self.install_label)
        layout.addWidget(self.bar)
        layout.addLayout(buttons)
        layout.addStretch(1)
        self.poll = QTimer(self, interval=250)
        self.poll.timeout.connect(self._poll)
        self.poll.start()

    def _poll(self) -> None:
        report = self.progress_source()
        if report is None:
            return
        label, done, total = report
        self.install_label.setText(f"Installing {label}: {done / 1e6:.0f} of {total / 1e6:.0f} MB")
        self.bar.setRange(0, 1000)
        self.bar.setValue(int(1000 * done / total) if total else 0)

    def engine_ready(self, report: dict[str, Any]) -> None:
        self.poll.stop()
        self.device.setText("\n".join(plain_words(report)))
        model = (report.get("model") or {}).get("label", "the default model")
        self.install_label.setText(f"{model} is installed and loaded.")
        self.bar.setRange(0, 1)
        self.bar.setValue(1)
        for button in (self.chat_btn, self.classify_btn):
            button.setEnabled(True)

    def engine_failed(self, message: str) -> None:
        self.poll.stop()
        self.install_label.setText(f"⚠ {message}")
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
