"""How many cores other processes keep busy, so decode can drop to fewer threads while they do.

llama.cpp's OpenMP workers meet at a barrier for every operation of a step; when one of them is
descheduled because another program took its core, the others spin and the step waits for a time
slice. Measured here on 2 cores with one busy process: 2 threads decode 103 tok/s, 1 thread 148.
So the thread count is switched between steps (a cheap call) while the machine is loaded, to the
count ``autoglm tune`` measured fastest under load, and back when the load goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

BUSY_ABOVE = 0.6  # cores used by others: switch to the busy thread count above this
IDLE_BELOW = 0.3  # and back below this (a gap, so a load near one threshold does not flap)
INTERVAL_S = 1.0


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
    """Decides between the idle and the busy thread counts from the measured load of others."""

    def __init__(self, idle: tuple[int, int], busy: tuple[int, int], load: OtherLoad | None = None) -> None:
        self.idle, self.busy = idle, busy
        self.load = load or OtherLoad()
        self.current = idle
        self.switches = 0

    def check(self) -> tuple[int, int] | None:
        """The thread counts to switch to now, or None to keep the current ones."""
        others = self.load.sample()
        if others is None:
            return None
        want = (self.busy if others > BUSY_ABOVE else self.idle if others < IDLE_BELOW else self.current)
        if want == self.current:
            return None
        self.current = want
        self.switches += 1
        return want
