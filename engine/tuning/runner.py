"""``autoglm tune``: the search of ``tuning.search`` over real measurements in crash-isolated children.

A configuration that kills its child (a native crash) or hangs is recorded as failed and never
chosen; the next one gets a fresh child. "Busy" measurements run beside a process that keeps
one core busy, as a desktop's other programs do.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import IO

from autoglm.engine import paths, selftest
from autoglm.engine.fs import write_cache
from autoglm.engine.loader import Prepared
from autoglm.engine.process import module_command
from autoglm.engine.startup import WAIT_POLICY_FILE
from autoglm.engine.tuning import cache
from autoglm.engine.tuning.search import Config, Search, Speed, Tuned, layer_choices

MEASURE_TIMEOUT_S = 60.0  # one configuration, model load included
BUSY_LOOP = module_command("autoglm.engine.tuning.child", "--spin")  # a bundle has no `python -c`, Windows no sh


class Children:
    """One measuring child per OpenMP wait policy, started on first use and after a crash."""

    def __init__(self, model_path: str, gpu_layers: int, nice: int = 0) -> None:
        self.model_path, self.gpu_layers, self.nice = model_path, gpu_layers, nice
        self.procs: dict[str, tuple[subprocess.Popen[str], IO[str]]] = {}
        self.spinner: subprocess.Popen[bytes] | None = None

    def measure(self, config: Config) -> Speed:
        self._busy(config.busy)
        proc, log = self._child(config.wait)
        assert proc.stdin is not None and proc.stdout is not None
        fields = {k: getattr(config, k) for k in ("threads", "threads_batch", "flash_attn", "kv_type", "n_ubatch",
                                                  "extra_bufts")}
        try:
            proc.stdin.write(json.dumps(fields) + "\n")
            proc.stdin.flush()
            line = _readline(proc.stdout, MEASURE_TIMEOUT_S)
        except (BrokenPipeError, TimeoutError) as exc:
            line, why = "", "no answer" if isinstance(exc, TimeoutError) else "the child had ended"
        else:
            why = ""
        if line.startswith("RESULT "):
            return Speed(**json.loads(line[7:]))
        if not why:  # the child's stdout ended: it exited or was killed by a signal
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = 0
            log.seek(0)
            last = (log.read().strip().splitlines() or ["no output"])[-1][:160]
            why = f"crashed ({selftest.signal_name(code)})" if code < 0 else f"failed: {last}"
        self._drop(config.wait)
        return Speed(error=why)

    def _child(self, wait: str) -> tuple[subprocess.Popen[str], IO[str]]:
        if wait not in self.procs or self.procs[wait][0].poll() is not None:
            env = dict(os.environ)
            env.pop("OMP_WAIT_POLICY", None)
            if wait == "passive":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            log = tempfile.TemporaryFile("w+")  # llama.cpp's log: read back only to say why a child died
            argv = module_command("autoglm.engine.tuning.child", self.model_path, str(self.gpu_layers))
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                    **self._lower())
            self.procs[wait] = (proc, log)
        return self.procs[wait]

    def _lower(self) -> dict:
        """Popen arguments for a lower priority: a background tune yields the CPU to everything else."""
        if not self.nice:
            return {}
        if sys.platform == "win32":
            return {"creationflags": subprocess.BELOW_NORMAL_PRIORITY_CLASS}
        return {"preexec_fn": lambda: os.nice(self.nice)}

    def _drop(self, wait: str) -> None:
        proc, log = self.procs.pop(wait)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    def _busy(self, on: bool) -> None:
        if on and self.spinner is None:
            self.spinner = subprocess.Popen(BUSY_LOOP, **self._lower())
        elif not on and self.spinner is not None:
            self.spinner.kill()
            self.spinner.wait()
            self.spinner = None

    def close(self) -> None:
        self._busy(False)
        for wait in list(self.procs):
            self._drop(wait)


def _readline(stream: IO[str], timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError
    return stream.readline()


def base_config(prepared: Prepared) -> Config:
    plan = prepared.plan
    return Config(threads=plan.threads, threads_batch=plan.threads_batch, flash_attn=plan.flash_attn,
                  kv_type=plan.kv_type, n_ubatch=plan.n_ubatch, extra_bufts=plan.use_extra_bufts,
                  wait="passive" if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" else "spin",
                  gpu_layers=plan.gpu_layers)


def tune(prepared: Prepared, budget_s: float = 60.0,
         on_trial: Callable[[Config, Speed], None] | None = None, nice: int = 0, user_layers: bool = False,
         workload: str = "chat") -> Tuned:
    """Measure, choose, cache; what the planner then uses for this model on this device.
    ``on_trial`` may raise to stop early (nothing is stored then). ``user_layers``: the GPU layer
    count was set by the user, so other splits are not measured (the plan would not take them).
    ``workload``: what a trade of prefill against decode is judged by (search.WORKLOADS)."""
    children = Children(str(prepared.model.path), prepared.plan.gpu_layers, nice)

    def measure(config: Config) -> Speed:
        speed = children.measure(config)
        if on_trial is not None:
            on_trial(config, speed)
        return speed

    cores = prepared.device.cpu.big_cores or prepared.device.cpu.physical_cores or 1
    try:
        tuned = Search(measure, budget_s, workload=workload).run(
            base_config(prepared), cores, extra_bufts_ok=bool(prepared.verdict and prepared.verdict.ok),
            wait_policies=True,
            layers=[] if user_layers else layer_choices(prepared.plan.gpu_layers, prepared.model.facts.n_layers))
    finally:
        children.close()
    if tuned.base.ok:
        cache.store(prepared.device, cache.model_key(prepared.model), prepared.plan.gpu_layers, tuned)
        wait_file = paths.cache_dir() / WAIT_POLICY_FILE  # read at the next start, before libgomp loads
        if tuned.idle.wait == "passive":
            write_cache(wait_file, "PASSIVE")
        else:
            wait_file.unlink(missing_ok=True)
    return tuned


__all__ = ["Children", "base_config", "tune"]
