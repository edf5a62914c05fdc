"""Several models in one server (fast tier): the pool over fake runtimes and a fake clock: loads
on demand, one load for many waiters, least-recently-used eviction within the memory budget,
never a busy model, keep-alive (0 unloads at once, negative pins, idle expiry), and a clear
refusal when every other model is busy."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from autoglm.engine.errors import InvalidArgumentError, ModelNotFoundError, QueueFullError
from autoglm.engine.server import pool as pool_module
from autoglm.engine.server.pool import ModelPool, keep_seconds

MB = 1 << 20


class FakeRuntime:
    def __init__(self, name: str) -> None:
        self.model_name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def installed(monkeypatch):
    sizes = {"a": 400 * MB, "b": 300 * MB, "c": 300 * MB}
    from autoglm.engine.models import store

    monkeypatch.setattr(store, "get", lambda name: SimpleNamespace(size=sizes[name], format="gguf")
                        if name in sizes else None)
    return sizes


def make(installed, budget_mb: int = 1000, keep_s: float = 300.0):
    loads: list[str] = []
    clock = Clock()

    def load(name: str):
        loads.append(name)
        return FakeRuntime(name), installed[name]

    first = FakeRuntime("a")
    return ModelPool(first, installed["a"], load, budget_mb * MB, keep_s, clock), loads, clock, first


def test_keep_alive_durations():
    assert keep_seconds(None, 300) == 300 and keep_seconds("5m", 0) == 300 and keep_seconds(30, 0) == 30
    assert keep_seconds("1h", 0) == 3600 and keep_seconds("0", 1) == 0 and keep_seconds(-1, 0) == float("inf")
    assert keep_seconds("250ms", 0) == 0.25
    with pytest.raises(InvalidArgumentError, match="not a duration"):
        keep_seconds("soon", 0)


def test_models_load_on_demand_once_and_the_least_recently_used_idle_one_makes_room(installed):
    async def scenario():
        pool, loads, clock, _ = make(installed, budget_mb=900)
        entries = await asyncio.gather(*(pool.acquire("b") for _ in range(5)))  # five requests, one load
        assert loads == ["b"] and all(e is entries[0] for e in entries) and entries[0].active == 5
        for e in entries:
            await pool.release(e)
        clock.now = 10
        await pool.acquire("c")  # 400 + 300 + 300 > 900 MB: b (idle, least recent) goes, a stays (the first)
        assert loads == ["b", "c"] and sorted(pool.models) == ["a", "c"] and entries[0].runtime.closed
        with pytest.raises(QueueFullError, match="busy: c"):
            await pool.acquire("b")  # now c is busy and a is the first: no room
        assert sorted(pool.models) == ["a", "c"]  # nothing unloaded for a load that could not happen
    asyncio.run(scenario())


def test_keep_alive_zero_unloads_when_the_request_ends_and_idle_models_expire(installed):
    async def scenario():
        pool, _, clock, first = make(installed, budget_mb=4000)
        b = await pool.acquire("b", keep_alive=0)
        assert "b" in pool.models
        await pool.release(b)
        assert "b" not in pool.models and b.runtime.closed  # freed now, not in five minutes
        c = await pool.acquire("c", keep_alive="30s")
        pinned = await pool.acquire("b", keep_alive=-1)
        for e in (c, pinned):
            await pool.release(e)
        clock.now = 29
        await pool.sweep()
        assert sorted(pool.models) == ["a", "b", "c"]
        clock.now = 31
        await pool.sweep()
        assert sorted(pool.models) == ["a", "b"] and not first.closed  # pinned and the first stay
        [(_, _, expires_b)] = [x for x in pool.loaded() if x[0] == "b"]
        assert expires_b == float("inf")
        busy = await pool.acquire("b", keep_alive=0)
        clock.now = 1000
        await pool.sweep()
        assert "b" in pool.models  # never while a request runs
        await pool.release(busy)
        assert "b" not in pool.models
    asyncio.run(scenario())


def test_unknown_models_and_failed_loads_are_errors_for_every_waiter(installed, monkeypatch):
    async def scenario():
        pool, _, _, _ = make(installed)
        with pytest.raises(ModelNotFoundError, match="not an installed chat model"):
            await pool.acquire("../../etc/passwd")

        def broken(name):
            raise RuntimeError("llama.cpp could not load it")

        pool.load = broken
        results = await asyncio.gather(*(pool.acquire("b") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results) and "b" not in pool.models
        assert not pool._loading  # the next request tries again
    asyncio.run(scenario())


def test_the_sweeper_runs_on_its_own(installed, monkeypatch):
    monkeypatch.setattr(pool_module, "SWEEP_S", 0.01)

    async def scenario():
        pool, _, clock, _ = make(installed, keep_s=5)
        await pool.release(await pool.acquire("b"))
        clock.now = 6
        task = asyncio.create_task(pool.run_sweeper())
        await asyncio.sleep(0.05)
        task.cancel()
        assert "b" not in pool.models
    asyncio.run(scenario())


def test_a_loaded_model_cannot_be_deleted_under_its_requests():
    from tests.test_server_fast import MANAGE, make_client

    client, scheduler, _ = make_client()
    try:
        r = client.delete("/autoglm/models/fake-model", headers=MANAGE)
        assert r.status_code == 400 and "is loaded" in r.json()["error"]["message"]
    finally:
        scheduler.close()


def test_a_request_that_goes_away_mid_load_leaves_the_load_to_the_others(installed):
    import time as _time

    async def scenario():
        pool, loads, _, _ = make(installed)
        slow = pool.load

        def load(name):
            _time.sleep(0.2)
            return slow(name)

        pool.load = load
        first = asyncio.create_task(pool.acquire("b"))
        await asyncio.sleep(0.05)
        first.cancel()  # its client disconnected while the model loaded
        second = await pool.acquire("b")
        assert loads == ["b"] and second.active == 1 and not second.runtime.closed
        await pool.sweep()
        assert "b" in pool.models  # a fresh model is not swept before its requests pick it up
    asyncio.run(scenario())
