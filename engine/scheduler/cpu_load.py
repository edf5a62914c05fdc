"""How many cores other processes keep busy, so decode can drop to fewer threads while they do.

llama.cpp's OpenMP workers meet at a barrier for every operation of a step; when one of them is
descheduled because another program took its core, the others spin and the step waits for a time
slice. Measured here on 2 cores with one busy process: the planned 2 threads ran a 64-token answer
in 37.7 s, 1 thread in 1.6 s. So, untuned and by default, decode runs on no more threads than there
are cores other processes leave free, switched between steps (a cheap call) as their load comes
and goes; where `autoglm tune` measured a count under load, that count caps it. The load is sampled
every quarter second: a one-second look cost a short answer most of its time at the wrong count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil

DOWN_BELOW = 0.4  # one thread fewer when the free cores fall this far below the threads running
UP_FROM = 0.7  # one more when they rise this far above (a gap, so a load near a boundary does not flap)
INTERVAL_S = 0.25


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: a container or taskset may allow fewer)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class OtherLoad:
    """Cores in use by other processes over the last interval: the system's busy CPU time minus
    this process's own (every thread of it: the scheduler's workers, the server, the encoders)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.me = psutil.Process()
        self._last = self._read()

    def _read(self) -> tuple[float, float, float]:
        cpu = psutil.cpu_times()
        busy = sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0)
        own = self.me.cpu_times()
        return self.clock(), busy, own.user + own.system

    def sample(self) -> float | None:
        """Cores used by others since the previous sample, or None before an interval has passed."""
        now = self.clock()
        if now - self._last[0] < INTERVAL_S:
            return None
        then, busy0, own0 = self._last
        self._last = self._read()
        _, busy1, own1 = self._last
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(self._last[0] - then, 1e-6)


class ThreadSwitch:
    """Chooses the decode and prefill thread counts from the measured load of others."""

    def __init__(self, idle: tuple[int, int], busy: tuple[int, int] | None = None, load: OtherLoad | None = None,
                 cores: int | None = None) -> None:
        self.idle, self.busy = idle, busy  # busy: what `autoglm tune` measured with a core taken, if it did
        self.cores = cores or available_cores()
        self.load = load or OtherLoad()
        self.current = idle
        self.switches = 0

    def _want(self, others: float) -> tuple[int, int]:
        free = self.cores - others
        n = self.current[0]
        while n > 1 and free < n - DOWN_BELOW:
            n -= 1
        while n < self.idle[0] and free >= n + UP_FROM:
            n += 1
        if n >= self.idle[0]:
            return self.idle
        if self.busy is not None:
            return min(n, self.busy[0]), self.busy[1]
        return n, max(1, self.idle[1] - (self.idle[0] - n))

    def check(self) -> tuple[int, int] | None:
        """The thread counts to switch to now, or None to keep the current ones."""
        others = self.load.sample()
        if others is None:
            return None
        want = self._want(others)
        if want == self.current:
            return None
        self.current = want
        self.switches += 1
        return want
