"""``autoglm serve``: settings (flags over a TOML file over defaults), bind safety, uvicorn.

Binding anything but loopback without an API key is refused: an edge board on a shared network
must not hand out its model to anyone who finds the port. ``--port 0`` takes a free port and
prints it, which is how the desktop app finds its child server.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import uvicorn

from autoglm.engine import loader
from autoglm.engine.cli_progress import progress_bar
from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.fs import read_user_text
from autoglm.engine.models.store import sweep_stale_stages
from autoglm.engine.planner import Overrides
from autoglm.engine.router import route
from autoglm.engine.runtime import Runtime
from autoglm.engine.server.app import ServerConfig, create_app
from autoglm.engine.server.lifecycle import CANCEL_WAIT_S, DEFAULT_GRACE_S, Lifecycle
from autoglm.engine.server.pool import DEFAULT_KEEP_S, ModelPool, keep_seconds
from autoglm.engine.tuning.background import start_if_wanted

MAX_QUEUE = 100_000  # waiting requests; each holds a connection and its prompt's tokens


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None
    parallel: int | None = None  # None: the plan's (4 on a CPU; what the KV budget holds on a GPU)
    ctx: int = 2048  # per sequence
    threads: int | None = None
    gpu_layers: int | None = None  # -1: all; None: planned
    safe: bool = False  # the planner's most conservative kernels (the GUI restarts a crashed engine so)
    api_key: str | None = None
    manage_key: str | None = None  # the management API's own key; without one it is off
    no_manage: bool = False
    no_speculate: bool = False  # greedy requests verify drafts from their own context unless this is set
    draft: str | None = None  # a draft model with the target's vocabulary: drafts for every unconstrained stream
    max_queue: int = 64
    max_body_bytes: int = 1 << 20
    cors_origins: list[str] = field(default_factory=list)
    grace: float = DEFAULT_GRACE_S  # seconds a SIGTERM leaves requests in flight to finish
    keep_alive: str = "5m"  # how long another model a request named stays loaded when idle ("-1": for ever)
    max_memory: int | None = None  # MB all loaded chat models may hold; None: three quarters of the RAM

    @classmethod
    def load(cls, config: str | None, overrides: dict[str, Any]) -> ServeSettings:
        values: dict[str, Any] = {}
        if config:
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # Python 3.10
                import tomli as tomllib
            try:
                data = tomllib.loads(read_user_text(config, 1 << 20, "TOML settings file"))
            except tomllib.TOMLDecodeError as exc:
                raise InvalidArgumentError(f"{config} is not valid TOML: {exc}") from None
            data = data.get("serve", data)
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(data) - known)
            if unknown:
                raise InvalidArgumentError(f"{config}: unknown setting(s) {', '.join(unknown)} "
                                           f"(known: {', '.join(sorted(known))})")
            values.update({k.replace("-", "_"): v for k, v in data.items()})
            for key, value in values.items():
                _check_type(config, key, value)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.api_key = settings.api_key or os.environ.get("AUTOGLM_API_KEY") or None
        settings.manage_key = settings.manage_key or os.environ.get("AUTOGLM_MANAGE_KEY") or None
        if settings.no_manage:
            settings.manage_key = None
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidArgumentError(f"port must be 0-65535, got {self.port}")
        if self.parallel is not None and not 1 <= self.parallel <= 64:
            raise InvalidArgumentError(f"--parallel must be 1-64, got {self.parallel}")
        if self.ctx < 64:
            raise InvalidArgumentError(f"--ctx must be at least 64, got {self.ctx}")
        if not 0 <= self.grace <= 3600:
            raise InvalidArgumentError(f"--grace must be 0-3600 seconds, got {self.grace:g}")
        keep_seconds(self.keep_alive, 0.0)  # a bad duration is a one-line error now, not on the first request
        if self.max_memory is not None and self.max_memory < 64:
            raise InvalidArgumentError(f"--max-memory is in MB and must be at least 64, got {self.max_memory}")
        if not 1 <= self.max_queue <= MAX_QUEUE:
            raise InvalidArgumentError(f"--max-queue must be 1-{MAX_QUEUE}, got {self.max_queue}")
        if not _is_loopback(self.host) and not self.api_key:
            raise InvalidArgumentError(f"refusing to listen on {self.host} without an API key: pass --api-key "
                                       "or set AUTOGLM_API_KEY (loopback needs none)")


def _check_type(config: str, key: str, value: Any) -> None:
    """A TOML value of the wrong kind (``parallel = "4"``) gets a line naming it, not a TypeError later."""
    import types
    import typing

    hint = typing.get_type_hints(ServeSettings).get(key)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # "int | None": the int
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    want = typing.get_origin(hint) or hint
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool)) if want else True
    if ok and want is list:
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        assert want is not None  # no hint (an unknown key) is never refused here
        kind = "a list of strings" if want is list else {int: "a whole number", str: "a string", bool: "true or false"}[
            want]
        raise InvalidArgumentError(f"{config}: {key} must be {kind}, got {value!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


FAILED_EXIT = 3  # a step failed: the supervisor (systemd, the desktop app) restarts the engine


@dataclass
class Engine:
    """What ``autoglm serve`` loads before it listens (a Ray Serve replica loads the same)."""

    runtime: Runtime
    pool: ModelPool
    parallel: int
    idle_tuner: Any = None


def load_engine(settings: ServeSettings, progress: Any = None) -> Engine:
    """The chat model the settings name (a first run pulls it), planned for this device, behind its
    scheduler, in a pool that loads other installed models on demand."""
    sweep_stale_stages()  # staging left by a pull that was killed
    overrides = Overrides(threads=settings.threads, gpu_layers=settings.gpu_layers, safe=settings.safe)
    prepared = loader.prepare(route("chat", settings.model), overrides, progress=progress)
    parallel = settings.parallel or prepared.plan.slots
    model = loader.load_scheduled(prepared, parallel, settings.ctx, settings.max_queue,
                                  speculative=not settings.no_speculate, draft=settings.draft)
    name = prepared.model.manifest.name if prepared.model.manifest else Path(prepared.model.path).stem
    runtime = Runtime(name, model, prepared.device, loader.describe(prepared))

    def load_other(other: str) -> tuple[Runtime, int]:
        """Another installed chat model a request named, planned like the first (no draft model)."""
        more = loader.prepare(other, overrides)
        backend = loader.load_scheduled(more, settings.parallel or more.plan.slots, settings.ctx,
                                        settings.max_queue, speculative=not settings.no_speculate)
        backend.scheduler.on_fatal = lambda reason: print(f"autoglm: error: {other} failed: {reason}",
                                                          file=sys.stderr, flush=True)
        size = more.model.manifest.size if more.model.manifest else Path(more.model.path).stat().st_size
        return Runtime(other, backend, more.device, loader.describe(more)), size

    budget = (settings.max_memory << 20) if settings.max_memory else int(prepared.device.ram_total * 0.75)
    first_size = prepared.model.manifest.size if prepared.model.manifest else Path(prepared.model.path).stat().st_size
    pool = ModelPool(runtime, first_size, load_other, budget, keep_seconds(settings.keep_alive, DEFAULT_KEEP_S))
    idle_tuner = start_if_wanted(prepared, model.scheduler, bool(settings.safe))  # tunes while nobody waits
    return Engine(runtime, pool, parallel, idle_tuner)


def serve(settings: ServeSettings) -> int:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        raise InvalidArgumentError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
    engine = load_engine(settings, progress_bar())
    sock.listen(2048)  # listening before the banner, so a client that reads it can connect at once
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"serving {engine.runtime.model_name} on http://{shown}:{port} ({engine.parallel} parallel x "
          f"{settings.ctx} tokens)", flush=True)
    config = ServerConfig(settings.api_key, settings.max_body_bytes, settings.cors_origins,
                          loopback_only=_is_loopback(settings.host), manage_key=settings.manage_key)
    if settings.manage_key is None:
        print("management API off (--manage-key KEY turns it on)", file=sys.stderr, flush=True)
    try:
        return run(engine.runtime, config, sock, Lifecycle(settings.grace), engine.pool)
    finally:
        if engine.idle_tuner is not None:
            engine.idle_tuner.stop()


def run(runtime: Runtime, config: ServerConfig, sock: socket.socket, lifecycle: Lifecycle | None = None,
        pool: ModelPool | None = None) -> int:
    """Serve until stopped (0: a signal, after draining) or until a scheduler step fails
    (FAILED_EXIT, for the supervisor)."""
    lifecycle = lifecycle or Lifecycle()
    server = _DrainingServer(uvicorn.Config(create_app(runtime, config, lifecycle, pool), log_level="warning",
                                            access_log=False, timeout_graceful_shutdown=int(CANCEL_WAIT_S) + 2),
                             lifecycle)

    def on_fatal(reason: str) -> None:  # from the scheduler thread: the failed requests' replies go out, then stop
        print(f"autoglm: error: the engine failed: {reason}; exiting for a restart", file=sys.stderr, flush=True)
        server.should_exit = True

    runtime.scheduler.on_fatal = on_fatal
    try:
        server.run(sockets=[sock])
    finally:
        if pool is not None:
            pool.close()
        runtime.close()
    if runtime.scheduler.failed:
        return FAILED_EXIT
    print("server stopped", file=sys.stderr)
    return 0


class _DrainingServer(uvicorn.Server):
    """uvicorn with a replica's SIGTERM (lifecycle.py): the first SIGTERM or Ctrl-C drains, a
    second cancels what is left; the loop's tick decides when to stop."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: Any) -> None:  # a signal handler: flags only, and no re-raise later
        if self.lifecycle.draining:
            self.lifecycle.cancel_all()
            return
        self.lifecycle.begin()
        print(f"autoglm: draining: finishing {self.lifecycle.in_flight} request(s) for up to "
              f"{self.lifecycle.grace_s:g}s (signal again to stop now)", file=sys.stderr, flush=True)

    async def on_tick(self, counter: int) -> bool:
        if self.lifecycle.should_exit():
            return True
        return await super().on_tick(counter)
