"""Tuning after a model's first load, without anyone asking: when the server has been idle for a
while (``AUTOGLM_AUTOTUNE_IDLE`` seconds, 30 by default), ``autoglm tune`` runs in its children at
low priority; a request arriving meanwhile stops it (within one measurement, about 2 s) and it
tries again at the next idle spell. The result is used from the next start: switching a loaded
context's settings under running streams is not worth the risk. ``AUTOGLM_AUTOTUNE=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from autoglm.engine.loader import Prepared
from autoglm.engine.scheduler.cpu_load import OtherLoad
from autoglm.engine.tuning.runner import tune
from autoglm.engine.tuning.search import Config, Speed, Tuned

log = logging.getLogger(__name__)
ATTEMPTS = 3
NICE = 10
QUIET_CORES = 0.3  # other processes' CPU use (in cores) under which the machine counts as idle


class Interrupted(Exception):
    """A request arrived: the measurement gives way."""


def enabled(prepared: Prepared, safe: bool, env: dict[str, str] | None = None) -> bool:
    """Not when measured already, in safe mode (the rules' most conservative plan is the point), or turned off."""
    env = dict(os.environ) if env is None else env
    return prepared.tuned is None and not safe and env.get("AUTOGLM_AUTOTUNE", "1") != "0"


class IdleTuner:
    def __init__(self, prepared: Prepared, busy: Callable[[], bool], idle_s: float | None = None,
                 budget_s: float | None = None, run: Callable[..., Tuned] = tune, load: Any = None) -> None:
        self.prepared, self.busy, self.run = prepared, busy, run
        self.idle_s = float(os.environ.get("AUTOGLM_AUTOTUNE_IDLE", "30")) if idle_s is None else idle_s
        self.budget_s = float(os.environ.get("AUTOGLM_AUTOTUNE_BUDGET", "60")) if budget_s is None else budget_s
        self.load = load or OtherLoad()
        # AUTOGLM_AUTOTUNE_QUIET: how many cores others may use for the machine to count as quiet (a
        # desktop that is never below 0.3 can accept a noisier measurement rather than none)
        self.quiet = float(os.environ.get("AUTOGLM_AUTOTUNE_QUIET", QUIET_CORES))
        self.stopping = threading.Event()
        self.result: Tuned | None = None
        self.interruptions = 0
        self.thread = threading.Thread(target=self._loop, name="autoglm-idle-tuner", daemon=True)

    def start(self) -> IdleTuner:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    def _idle_for(self, seconds: float) -> bool:
        """Wait until the server has had no request and the machine's other processes have used
        less than ``self.quiet`` cores for ``seconds`` in a row; False when stopping. Measuring on a
        busy machine would both slow its work and measure the wrong thing (two engines on one
        machine: one would tune while the other serves)."""
        since = time.monotonic()
        while not self.stopping.wait(0.5):
            others = self.load.sample()
            if self.busy() or (others is not None and others > self.quiet):
                since = time.monotonic()
            elif time.monotonic() - since >= seconds:
                return True
        return False

    def _check(self, config: Config, speed: Speed) -> None:
        if self.stopping.is_set() or self.busy():
            raise Interrupted

    def _loop(self) -> None:
        for _ in range(ATTEMPTS):
            if not self._idle_for(self.idle_s):
                return
            try:
                self.result = self.run(self.prepared, self.budget_s, self._check, nice=NICE)
            except Interrupted:
                self.interruptions += 1
                continue
            except Exception as exc:  # noqa: BLE001 - an optimisation failed: the rules' plan stays, said once
                log.warning("measuring settings in the background failed: %s", exc)
                return
            log.info("measured settings for %s: used from the next start", self.prepared.model.label)
            return


def start_if_wanted(prepared: Prepared, scheduler: Any, safe: bool) -> IdleTuner | None:
    if not enabled(prepared, safe):
        return None
    return IdleTuner(prepared, lambda: scheduler.active > 0 or scheduler.queue_depth > 0).start()
