"""Prometheus metrics for the server, in a private registry (prometheus_client)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, scheduler: Any, lifecycle: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.scheduler = scheduler
        self.requests = Counter("autoglm_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=self.registry)
        self.ttft = Histogram("autoglm_time_to_first_token_seconds", "time to first token", buckets=_BUCKETS,
                              registry=self.registry)
        self.latency = Histogram("autoglm_request_latency_seconds", "whole generation time", buckets=_BUCKETS,
                                 registry=self.registry)
        Gauge("autoglm_queue_depth", "requests waiting for a slot", registry=self.registry).set_function(
            lambda: scheduler.queue_depth)
        Gauge("autoglm_active_sequences", "sequences being generated", registry=self.registry).set_function(
            lambda: scheduler.active)
        Gauge("autoglm_slots", "sequences this replica decodes together (its capacity; queue beyond it)",
              registry=self.registry).set_function(lambda: scheduler.parallel)
        Gauge("autoglm_draining", "1 while the replica finishes its requests before it stops",
              registry=self.registry).set_function(lambda: float(bool(lifecycle and lifecycle.draining)))
        Gauge("autoglm_peak_active_sequences", "the most sequences decoded in one step since start",
              registry=self.registry).set_function(lambda: scheduler.stats.get("peak_active", 0))
        Gauge("autoglm_tokens_generated", "tokens generated since start", registry=self.registry).set_function(
            lambda: scheduler.stats["tokens_generated"])
        Gauge("autoglm_draft_tokens", "tokens drafted for speculative decoding since start",
              registry=self.registry).set_function(lambda: scheduler.stats.get("draft_tokens", 0))
        Gauge("autoglm_draft_accepted", "drafted tokens the model agreed with since start",
              registry=self.registry).set_function(lambda: scheduler.stats.get("draft_accepted", 0))
        Gauge("autoglm_padding_rows", "rows for idle sequences that kept a batch in one graph, since start",
              registry=self.registry).set_function(lambda: scheduler.stats.get("padding_rows", 0))
        self._last = (time.monotonic(), 0)
        Gauge("autoglm_tokens_per_second", "generation rate since the previous scrape",
              registry=self.registry).set_function(self._rate)

    def _rate(self) -> float:
        now, total = time.monotonic(), self.scheduler.stats["tokens_generated"]
        then, before = self._last
        self._last = (now, total)
        return (total - before) / (now - then) if now > then else 0.0

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
