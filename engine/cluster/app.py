"""``autoglm cluster serve``: the deployments of ``deployments.py`` on a Ray cluster (a local one
unless ``--address`` names one), autoscaled on ongoing requests with the target taken from a
replica's slots, behind one HTTP endpoint.

Autoscaling: Ray Serve's own policy with ``target_ongoing_requests`` = the slots one replica
decodes together, so replicas = ongoing requests / slots, between the minimum and the maximum;
a replica leaving (scale-down, a node drained) finishes what it holds first.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig

from autoglm.engine.cluster.deployments import EngineReplica, Gateway
from autoglm.engine.cluster.router import PrefixAffinityRouter
from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.server.serve import ServeSettings

GRACEFUL_S = 60  # a replica scaled down (or stopped) finishes its requests within this


@dataclass
class ClusterSettings:
    engine: ServeSettings = field(default_factory=ServeSettings)  # each replica's; host and port are the gateway's
    min_replicas: int = 1
    max_replicas: int = 2
    address: str | None = None  # a running Ray cluster; None starts a local one
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 120.0

    def validate(self) -> None:
        self.engine.validate()  # a non-loopback host without an API key is refused here too
        if not 1 <= self.min_replicas <= self.max_replicas <= 256:
            raise InvalidArgumentError(f"replicas must satisfy 1 <= --min-replicas ({self.min_replicas}) <= "
                                       f"--max-replicas ({self.max_replicas}) <= 256")
        if self.engine.parallel is None:
            raise InvalidArgumentError("--slots is needed: it is both each replica's --parallel and the "
                                       "autoscaler's target per replica")
        if self.upscale_delay_s < 0 or self.downscale_delay_s < 0:
            raise InvalidArgumentError("--upscale-delay and --downscale-delay are seconds, 0 or more")


def build(settings: ClusterSettings) -> Any:
    """The application: a gateway over the autoscaled engine replicas."""
    engine = settings.engine
    slots = engine.parallel or 1
    threads = engine.threads or 1
    # (Any: Ray's annotations of these, pydantic v1 shims and overloads, do not type-check as used)
    router: Any = RequestRouterConfig
    replica: Any = serve.deployment(
        EngineReplica, name="engine", max_ongoing_requests=slots * 2,  # a little queue on each replica
        # past this many waiting for a replica, a request is refused at once (429) rather than held
        max_queued_requests=engine.max_queue * settings.max_replicas,
        autoscaling_config=AutoscalingConfig(
            min_replicas=settings.min_replicas, max_replicas=settings.max_replicas, target_ongoing_requests=slots,
            upscale_delay_s=settings.upscale_delay_s, downscale_delay_s=settings.downscale_delay_s,
            metrics_interval_s=2.0, look_back_period_s=10.0),
        ray_actor_options={"num_cpus": threads}, graceful_shutdown_timeout_s=GRACEFUL_S,
        request_router_config=router(request_router_class=PrefixAffinityRouter,
                                     request_routing_stats_period_s=2))
    gateway: Any = serve.deployment(Gateway, name="gateway", num_replicas=1, max_ongoing_requests=10_000,
                               ray_actor_options={"num_cpus": 0})
    inner = asdict(engine) | {"host": "127.0.0.1", "api_key": None, "manage_key": None, "no_manage": True}
    return gateway.bind(replica.bind(inner), engine.api_key, engine.max_body_bytes)


def run(settings: ClusterSettings) -> int:
    """Serve until SIGTERM or Ctrl-C, then stop the application (replicas finish their requests)."""
    settings.validate()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage report
    ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("AUTOGLM_")}})
    engine = settings.engine
    serve.start(http_options={"host": engine.host, "port": engine.port})
    serve.run(build(settings), name="autoglm", route_prefix="/")
    print(f"serving on http://{engine.host}:{engine.port} (Ray Serve: {settings.min_replicas}-"
          f"{settings.max_replicas} replicas x {engine.parallel} slots)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("stopping: replicas finish their requests", file=sys.stderr, flush=True)
    serve.delete("autoglm")
    serve.shutdown()
    ray.shutdown()
    return 0

