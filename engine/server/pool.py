"""Several chat models in one server: a request names any installed model; the pool loads it on
demand within a memory budget, evicts the least recently used idle model to make room, and
unloads a model once it has been idle for its keep-alive (Ollama's ``keep_alive``: per request,
with a server default; ``0`` unloads when the request ends, a negative one pins it).

Requests for a model that is loading wait for that one load (it takes seconds, in a worker
thread). A model with requests in flight is never unloaded; when the budget cannot be met
because every other model is busy, the request is refused with a retry (429), not queued
forever. The model the server started with stays loaded (it serves encoders, health and the
requests that name no model); the others come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from autoglm.engine.errors import InvalidArgumentError, ModelNotFoundError, QueueFullError
from autoglm.engine.models import store
from autoglm.engine.runtime import Runtime

DEFAULT_KEEP_S = 300.0  # Ollama's default: five minutes
SWEEP_S = 1.0
LOAD_GRACE_S = 5.0  # a model loaded for requests that have not picked it up yet is not unloaded for this long
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def keep_seconds(value: float | int | str | None, default: float) -> float:
    """A keep-alive as seconds: a number (seconds) or a duration ("5m", "30s", "1h"); negative pins
    (``inf``), ``None`` is the server's default."""
    if value is None or value == "":
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise InvalidArgumentError(f"keep_alive {str(value)[:32]!r} is not a duration (e.g. 300, \"5m\", \"1h\", "
                                       "0 to unload, -1 to keep)")
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
    return float("inf") if seconds < 0 else seconds


@dataclass
class Loaded:
    runtime: Runtime
    size: int  # bytes it holds: measured (RSS grown by its load) or, failing that, its file size
    keep_s: float
    last_used: float
    active: int = 0
    used: bool = False  # a request has had it since it loaded

    def expires_at(self, now_wall: float, now: float, pinned: bool = False) -> float:
        """Wall-clock time it unloads if left idle (``inf``: never)."""
        if pinned or self.active or self.keep_s == float("inf"):
            return float("inf")
        return now_wall + max(self.last_used + self.keep_s - now, 0.0)


Loader = Callable[[str], tuple[Runtime, int]]  # name -> a loaded runtime and the bytes it took


class ModelPool:
    def __init__(self, first: Runtime, first_size: int, load: Loader, budget_bytes: int,
                 default_keep_s: float = DEFAULT_KEEP_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.default = first.model_name
        self.load, self.budget, self.default_keep_s, self.clock = load, budget_bytes, default_keep_s, clock
        self.models: dict[str, Loaded] = {self.default: Loaded(first, first_size, default_keep_s, clock())}
        self._loading: dict[str, asyncio.Future[Loaded]] = {}  # loads under way, by model
        self._lock = asyncio.Lock()

    @property
    def primary(self) -> Runtime:
        """The model the server started with: encoders, health and the default answer."""
        return self.models[self.default].runtime

    def name(self, requested: str | None) -> str:
        return self.default if requested in (None, "", "default") else str(requested)

    async def acquire(self, requested: str | None, keep_alive: float | int | str | None = None) -> Loaded:
        """The model, loaded and marked busy until ``release``."""
        name = self.name(requested)
        keep = keep_seconds(keep_alive, self.default_keep_s)
        while True:
            async with self._lock:
                entry = self.models.get(name)
                if entry is not None:
                    entry.active += 1
                    entry.used = True
                    entry.keep_s, entry.last_used = keep, self.clock()
                    return entry
                task = self._loading.get(name)
                if task is None:  # the load is a task of its own: a client that goes away leaves it to the others
                    task = self._loading[name] = asyncio.ensure_future(self._load(name, keep))
                    task.add_done_callback(partial(self._loaded, name))
            await asyncio.shield(task)  # its failure is raised to every waiter

    def _loaded(self, name: str, task: asyncio.Future[Loaded]) -> None:
        self._loading.pop(name, None)
        if not task.cancelled():
            task.exception()  # retrieved: the waiters re-raise it

    async def _load(self, name: str, keep: float) -> Loaded:
        manifest = await asyncio.to_thread(store.get, name)
        if manifest is None or manifest.format != "gguf":
            raise ModelNotFoundError(f"the model '{name[:80]}' is not an installed chat model "
                                     "(GET /v1/models or /api/tags lists them)")
        await self._make_room(manifest.size)
        runtime, size = await asyncio.to_thread(self.load, name)
        async with self._lock:  # not used yet: safe from the sweep until a request has had it (LOAD_GRACE_S)
            entry = self.models[name] = Loaded(runtime, size, keep, self.clock())
        return entry

    async def _make_room(self, needed: int) -> None:
        """Unload idle models, least recently used first, until ``needed`` bytes fit the budget."""
        async with self._lock:
            held = sum(e.size for e in self.models.values())
            victims = []
            for name, entry in sorted(self.models.items(), key=lambda kv: kv[1].last_used):
                if held + needed <= self.budget:
                    break
                if entry.active == 0 and name != self.default and self._idle(entry, self.clock()):
                    victims.append(self.models.pop(name))
                    held -= entry.size
            if held + needed > self.budget:
                self.models.update({v.runtime.model_name: v for v in victims})  # nothing unloaded after all
                busy = ", ".join(sorted(n for n, e in self.models.items() if e.active)) or "none"
                raise QueueFullError(f"not enough memory for another model now ({needed >> 20} MB more than the "
                                     f"{self.budget >> 20} MB budget allows; busy: {busy}); retry shortly")
        for victim in victims:
            await asyncio.to_thread(victim.runtime.close)

    async def release(self, entry: Loaded) -> None:
        async with self._lock:
            entry.active -= 1
            entry.last_used = self.clock()
        if entry.keep_s == 0:
            await self.sweep()

    async def sweep(self) -> None:
        """Unload the idle models whose keep-alive has run out (the server calls this every second)."""
        now = self.clock()
        async with self._lock:
            done = [n for n, e in self.models.items() if n != self.default and self._idle(e, now)
                    and e.keep_s != float("inf") and now - e.last_used >= e.keep_s]
            gone = [self.models.pop(n) for n in done]
        for entry in gone:
            await asyncio.to_thread(entry.runtime.close)

    @staticmethod
    def _idle(entry: Loaded, now: float) -> bool:
        """No request holds it, and it is not a model just loaded for the requests still on their way."""
        return entry.active == 0 and (entry.used or now - entry.last_used >= LOAD_GRACE_S)

    async def run_sweeper(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(SWEEP_S)
                await self.sweep()

    def loaded(self) -> list[tuple[str, Loaded, float]]:
        """Each loaded model with the wall-clock time it unloads if left idle (``inf``: never)."""
        now, wall = self.clock(), time.time()
        return [(n, e, e.expires_at(wall, now, pinned=n == self.default)) for n, e in self.models.items()]

    def close(self) -> None:
        """Unload the models loaded on demand (the first one is its owner's to close)."""
        for name, entry in list(self.models.items()):
            if name != self.default:
                entry.runtime.close()
                del self.models[name]
