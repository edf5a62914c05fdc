"""A replica's life after SIGTERM, as Kubernetes and load balancers expect it: readiness answers
503 at once so no new traffic is routed here, new requests are refused with 503, requests in
flight (streams included) run to their end within a grace period, then the process exits 0. A
second signal, or the end of the grace period, cancels what is left, and each cancelled stream
ends with an error event that says why instead of being cut mid-token.

Kept apart from uvicorn: uvicorn's own graceful shutdown closes the listening socket first (a
readiness probe then fails to connect rather than reading 503) and cancels the handlers after
5 s, which raised ``CancelledError`` through a stream and re-raised SIGTERM after the server
stopped (exit 143 with a traceback).
"""

from __future__ import annotations

import threading
import time
from typing import Any

DEFAULT_GRACE_S = 25.0  # inside Kubernetes' default terminationGracePeriodSeconds (30 s), with room to exit
CANCEL_WAIT_S = 3.0  # after cancelling, how long the ended streams get to send their error events


class Lifecycle:
    """Shared by the guard (admission, in-flight count), the serving layer (the scheduler requests
    it may cancel) and the server loop (when to stop). Plain attributes and a lock: the signal
    handler, the event loop and worker threads all touch it."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.grace_s = grace_s
        self.draining_since: float | None = None
        self.cancelled_at: float | None = None
        self.in_flight = 0  # HTTP requests past the guard, probes excepted
        self._live: dict[int, Any] = {}  # scheduler requests by id (unhashable dataclasses), cancelled at the deadline
        self._lock = threading.Lock()

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    @property
    def stopping(self) -> bool:
        """The grace period is over (or a second signal came): what still runs is being cancelled."""
        return self.cancelled_at is not None

    def begin(self) -> None:
        if self.draining_since is None:
            self.draining_since = time.monotonic()

    def cancel_all(self) -> None:
        self.begin()
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
        with self._lock:
            live = list(self._live.values())
        for req in live:
            req.cancel()

    def track(self, req: Any) -> None:
        with self._lock:
            self._live[id(req)] = req
        if self.stopping:
            req.cancel()

    def untrack(self, req: Any) -> None:
        with self._lock:
            self._live.pop(id(req), None)

    def should_exit(self, now: float | None = None) -> bool:
        """Polled by the server loop while draining: exit once idle, and cancel at the deadline."""
        if self.draining_since is None:
            return False
        now = time.monotonic() if now is None else now
        if self.in_flight == 0:
            return True
        if self.cancelled_at is None and now - self.draining_since >= self.grace_s:
            self.cancel_all()
        return self.cancelled_at is not None and now - self.cancelled_at >= CANCEL_WAIT_S
