"""Which llama.cpp settings run a model fastest on this device, by measuring them.

Pure: the search gets a ``measure(config) -> Speed`` callable, so the fast tier drives it with a
fake and ``autoglm tune`` with crash-isolated children that load the real model. One knob at a
time from the planner's choice (coordinate descent): the knobs barely interact on a CPU, and a
full grid would not fit the default 60 s. A change is kept only when it beats the current choice
by more than the noise margin, so on a machine where nothing helps the plan stays as it was.
Then the same for a busy machine (another process spinning on one core), since a desktop is
never idle and llama.cpp's spinning workers collapse there.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

NOISE = 0.03  # a knob must win by more than this to move the choice off the planner's
# What a request is, for the choice between knobs that trade prefill for decode (repacked weights: on a 2-core
# AVX-512 EPYC with the 1.5B, 109 against 149 prompt tok/s and 30 against 25 reply tok/s). "chat": replies
# are read as they stream, so decode comes first. "documents": long prompts, short answers (questions over a
# file, classify or extract by a tuned prompt): 20 prompt tokens per reply token, and the whole request's time.
WORKLOADS: dict[str, float | None] = {"chat": None, "documents": 20.0}
UBATCHES = (128, 256, 512)
CONFIRM_ROUNDS = 2
IDLE_SHARE = 0.7  # of the budget; the rest is kept for the busy-machine measurements


@dataclass(frozen=True)
class Config:
    threads: int
    threads_batch: int
    flash_attn: bool = True
    kv_type: str = "f16"
    n_ubatch: int = 512
    extra_bufts: bool = False
    wait: str = "spin"
    busy: bool = False  # measured while another process keeps one core busy
    gpu_layers: int = 0  # layers offloaded; measured when the planner put only part of the model on a GPU

    def label(self) -> str:
        return (f"t{self.threads}/{self.threads_batch} fa={'on' if self.flash_attn else 'off'} kv={self.kv_type} "
                f"ub={self.n_ubatch} xbuf={'on' if self.extra_bufts else 'off'} {self.wait}"
                + (f" ngl={self.gpu_layers}" if self.gpu_layers else "") + (" busy" if self.busy else ""))


@dataclass
class Speed:
    prefill: float = 0.0  # tokens/s
    decode: float = 0.0  # tokens/s
    error: str = ""  # the child crashed or failed with this config: never chosen

    @property
    def ok(self) -> bool:
        return not self.error and self.prefill > 0 and self.decode > 0


@dataclass
class Trial:
    config: Config
    speed: Speed
    knob: str  # what this trial varied ("base" for the planner's own choice)


@dataclass
class Tuned:
    """The measured best, kept per model sha256 x device x llama.cpp build."""

    idle: Config
    busy: Config | None
    base: Speed
    best: Speed
    busy_base: Speed | None
    busy_best: Speed | None
    trials: list[Trial] = field(default_factory=list)
    measured_at: float = field(default_factory=time.time)
    seconds: float = 0.0
    workload: str = "chat"  # what the knobs were chosen for (WORKLOADS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tuned:
        def speed(d: dict | None) -> Speed | None:
            return Speed(**d) if d else None

        return cls(idle=Config(**data["idle"]), busy=Config(**data["busy"]) if data.get("busy") else None,
                   base=Speed(**data["base"]), best=Speed(**data["best"]), busy_base=speed(data.get("busy_base")),
                   busy_best=speed(data.get("busy_best")),
                   trials=[Trial(Config(**t["config"]), Speed(**t["speed"]), t["knob"])
                           for t in data.get("trials", [])],
                   measured_at=data.get("measured_at", 0.0), seconds=data.get("seconds", 0.0),
                   workload=data.get("workload", "chat") if data.get("workload") in WORKLOADS else "chat")


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to the cores, and the cores and one less: where the knee usually is."""
    counts = {cores, max(cores - 1, 1)}
    n = 1
    while n < cores:
        counts.add(n)
        n *= 2
    return sorted(counts)


def layer_choices(planned: int, n_layers: int) -> list[int]:
    """Other splits to measure when the planner put only part of the model on the GPU: its count
    comes from free memory and estimated buffers, so a few more layers may still fit (a split that
    does not fit fails in its child and is never chosen), and a few fewer can be faster when the
    GPU's compute buffers were squeezed. None with nothing or everything offloaded."""
    if not 0 < planned < n_layers:
        return []
    return [n for n in (planned + 4, planned + 2, planned - 2) if 0 < n <= n_layers]


def score(speed: Speed, ref: Speed) -> float:
    """Prefill and decode both matter to a user (time to first token, then reading speed): their
    ratios to the reference, geometric mean."""
    if not speed.ok:
        return 0.0
    return math.sqrt(speed.prefill / ref.prefill * speed.decode / ref.decode)


def request_time(speed: Speed, prompt_ratio: float) -> float:
    """Seconds per reply token with its share of the prompt (``prompt_ratio`` prompt tokens each)."""
    return prompt_ratio / speed.prefill + 1.0 / speed.decode


def improves(speed: Speed, ref: Speed, prompt_ratio: float | None = None) -> bool:
    """Chat (``prompt_ratio`` None): better overall by more than the noise, and not slower to read: on
    Qwen2.5-Coder-1.5B (2 AVX-512 cores) the geometric mean alone took a setting with 1.39x prefill
    and 0.82x decode. A reply's reading speed is most of a chat's time and all of a stream's, so a
    prefill gain does not buy a decode loss. Documents: a request's whole time, prompt included,
    shorter by more than the noise."""
    if prompt_ratio is None:
        return score(speed, ref) > 1.0 + NOISE and speed.decode >= ref.decode * (1.0 - NOISE)
    return speed.ok and request_time(ref, prompt_ratio) > request_time(speed, prompt_ratio) * (1.0 + NOISE)


class Search:
    def __init__(self, measure: Callable[[Config], Speed], budget_s: float,
                 clock: Callable[[], float] = time.monotonic, workload: str = "chat") -> None:
        if workload not in WORKLOADS:
            raise ValueError(f"unknown workload {workload!r}")
        self.measure, self.budget_s, self.clock = measure, budget_s, clock
        self.workload, self.prompt_ratio = workload, WORKLOADS[workload]
        self.started = clock()
        self.trials: list[Trial] = []

    def _left(self, share: float = 1.0) -> bool:
        return self.clock() - self.started < self.budget_s * share

    def _try(self, config: Config, knob: str) -> Speed:
        for trial in self.trials:
            if trial.config == config:
                return trial.speed
        speed = self.measure(config)
        self.trials.append(Trial(config, speed, knob))
        return speed

    def run(self, base: Config, cores: int, extra_bufts_ok: bool, wait_policies: bool,
            layers: Sequence[int] = ()) -> Tuned:
        """Idle knobs first (each decides on the whole score, threads on decode and prefill apart;
        ``layers``: other GPU splits to try), then the busy machine: threads for decode with one
        core taken."""
        base_speed = self._try(base, "base")
        if not base_speed.ok:
            return Tuned(base, None, base_speed, base_speed, None, None, self.trials, seconds=self._elapsed(),
                         workload=self.workload)
        best, best_speed = base, base_speed
        counts = [n for n in thread_counts(cores) if n != base.threads]
        measured = {base.threads: base_speed}
        for n in counts:
            if not self._left(IDLE_SHARE):
                break
            measured[n] = self._try(replace(base, threads=n, threads_batch=n), "threads")
        decode_t = _winner(measured, base.threads, lambda s: s.decode)
        prefill_t = _winner(measured, base.threads_batch, lambda s: s.prefill)
        if (decode_t, prefill_t) != (base.threads, base.threads_batch):
            candidate = replace(base, threads=decode_t, threads_batch=prefill_t)
            best, best_speed = candidate, self._try(candidate, "threads")
            if score(best_speed, base_speed) < 1.0:  # the split measured worse together: back to the plan
                best, best_speed = base, base_speed
        knobs: list[tuple[str, Callable[[Config], Config]]] = [
            *[("gpu_layers", lambda c, n=n: replace(c, gpu_layers=n)) for n in layers],
            ("flash_attn", lambda c: replace(c, flash_attn=not c.flash_attn, kv_type="f16")),
            ("kv_type", lambda c: replace(c, kv_type="q8_0") if c.flash_attn and c.kv_type == "f16" else c),
            *[("n_ubatch", lambda c, u=u: replace(c, n_ubatch=u)) for u in UBATCHES],
        ]
        if extra_bufts_ok:
            knobs.append(("extra_bufts", lambda c: replace(c, extra_bufts=not c.extra_bufts)))
        if wait_policies:
            knobs.append(("wait", lambda c: replace(c, wait="passive" if c.wait == "spin" else "spin")))
        for knob, change in knobs:
            if not self._left(IDLE_SHARE):
                break
            candidate = change(best)
            if candidate == best:
                continue
            speed = self._try(candidate, knob)
            if knob == "n_ubatch":  # the micro-batch splits prompts only: a decode step is one row
                wins = speed.ok and speed.prefill > best_speed.prefill * (1.0 + NOISE)
            else:
                wins = improves(speed, best_speed, self.prompt_ratio)
            if wins:
                best, best_speed = candidate, speed
        if best != base:
            best, base_speed, best_speed = self._confirm(base, best, base_speed, best_speed)
        busy, busy_base, busy_best = self._busy(best, cores)
        return Tuned(best, busy, base_speed, best_speed, busy_base, busy_best, self.trials, seconds=self._elapsed(),
                     workload=self.workload)

    def _confirm(self, base: Config, best: Config, base_speed: Speed,
                 best_speed: Speed) -> tuple[Config, Speed, Speed]:
        """Measure the rules' choice and the winner again, alternating, and keep the winner only if
        the medians still favour it: a search that compares many noisy trials flatters its winner."""
        runs = {base: [base_speed], best: [best_speed]}
        for _ in range(CONFIRM_ROUNDS):
            for config in (base, best):
                if self._left(IDLE_SHARE):
                    runs[config].append(self.measure(config))
        if len(runs[best]) == 1:  # no time left to confirm it: an unconfirmed winner is not trusted
            return base, base_speed, base_speed
        base_speed, best_speed = _median(runs[base]), _median(runs[best])
        if improves(best_speed, base_speed, self.prompt_ratio):
            return best, base_speed, best_speed
        return base, base_speed, base_speed

    def _busy(self, idle: Config, cores: int) -> tuple[Config | None, Speed | None, Speed | None]:
        if not self._left():
            return None, None, None
        start = replace(idle, busy=True)
        start_speed = self._try(start, "busy")
        if not start_speed.ok:
            return None, None, None
        best, best_speed = start, start_speed
        # threads only: the scheduler switches them between steps when other processes load the cores;
        # the wait policy is fixed when the process starts, so it is chosen once, above
        candidates = [replace(start, threads=n) for n in thread_counts(cores) if n != idle.threads]
        for candidate in candidates:
            if not self._left():
                break
            speed = self._try(candidate, "busy")
            if speed.ok and speed.decode > best_speed.decode * (1.0 + NOISE):
                best, best_speed = candidate, speed
        return best, start_speed, best_speed

    def _elapsed(self) -> float:
        return self.clock() - self.started


def _median(speeds: list[Speed]) -> Speed:
    ok = [s for s in speeds if s.ok] or speeds
    return Speed(prefill=statistics.median(s.prefill for s in ok), decode=statistics.median(s.decode for s in ok),
                 error=ok[0].error)


def _winner(measured: dict[int, Speed], current: int, metric: Callable[[Speed], float]) -> int:
    ok = {n: s for n, s in measured.items() if s.ok}
    if not ok or current not in ok:
        return current
    best = max(ok, key=lambda n: metric(ok[n]))
    return best if metric(ok[best]) > metric(ok[current]) * (1.0 + NOISE) else current
