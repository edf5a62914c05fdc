"""What a serving engine has loaded, owned in one place: the chat model behind its scheduler, and
ONNX encoders and classifiers opened once and cached by (name, version, precision), so requests
never reopen sessions (1 + one per layer) or convert a model each time. Thread budgets come from
the planner so onnxruntime and llama.cpp do not fight over the same cores.

Opening an encoder may pull and convert the default one on its first use (that is the promise
of ``autoglm classify`` too); it happens once, under a per-key lock, off the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from autoglm.engine.backends.onnx.encoder import Encoder
from autoglm.engine.models import store
from autoglm.engine.models.store import Manifest
from autoglm.engine.planner import onnx_threads
from autoglm.engine.scheduler.session import ScheduledBackend
from autoglm.engine.tasks.chat import PromptBuilder
from autoglm.engine.tasks.classify import Classifier, open_classifier
from autoglm.engine.tasks.embed import DEFAULT_ENCODER, encoder_manifest, load_encoder


class Runtime:
    def __init__(self, model_name: str, model: ScheduledBackend, device: Any,
                 report: dict[str, Any] | None = None) -> None:
        self.model_name, self.model = model_name, model
        self.scheduler = model.scheduler
        self.prompts = PromptBuilder(model)
        self.report = report or {}
        self.device = device
        self.onnx_threads, self.onnx_threads_reason = onnx_threads(device, model.plan.threads if model.plan else 1,
                                                                   model.plan.gpu_layers if model.plan else 0)
        self._cache: dict[tuple[str, ...], Any] = {}
        self._locks: dict[tuple[str, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    def health(self) -> tuple[bool, str]:
        failed = self.scheduler.failed
        return (False, f"the engine failed and must be restarted: {failed}") if failed else (True, "ok")

    def _cached(self, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        with self._guard:
            if key in self._cache:
                return self._cache[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one opening per key; the others wait for it
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def encoder(self, name: str | None = None, precision: str = "int8") -> tuple[Manifest, Encoder]:
        manifest = encoder_manifest(name or DEFAULT_ENCODER)
        key = ("encoder", manifest.name, manifest.version, precision)
        return manifest, self._cached(key, lambda: load_encoder(manifest, precision, self.onnx_threads, self.device))

    def classifier(self, name: str) -> tuple[Classifier, Encoder]:
        manifest = store.require(name)
        return self._cached(("classifier", manifest.name, manifest.version),
                            lambda: open_classifier(name, opener=self.encoder))

    def close(self) -> None:
        self._cache.clear()
        self.model.close()
