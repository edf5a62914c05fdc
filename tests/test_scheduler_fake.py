"""The scheduler thread over a fake executor (fast tier): batching, text events, cancel, stop,
fault containment and a safe close. The same scheduler runs the real model in test_server.py."""

from __future__ import annotations

import threading
import time

import pytest

from autoglm.engine.errors import DamagedModelError, QueueFullError, RequestTooCostlyError, SchedulerFailedError
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.scheduler.batch import Scheduler
from tests.fakes import FakeExecutor

GREEDY = SamplingParams(temperature=0, max_tokens=12)


def run(s: Scheduler, prompt: list[int], params: SamplingParams = GREEDY) -> tuple[str, str | None]:
    text, reason = "", None
    for ev in s.submit(prompt, params).stream(timeout=10):
        text += ev.text
        reason = ev.finish_reason if ev.done else reason
    return text, reason


@pytest.fixture
def sched():
    s = Scheduler(FakeExecutor(n_seq=4, n_batch=48), parallel=4, ctx_per_seq=256, max_queue=64).start()
    yield s
    s.close()


def test_concurrent_requests_get_what_each_gets_alone(sched):
    prompts = [[1 + (i * 3 + j) % 40 for j in range(5 + i * 7)] for i in range(12)]
    alone = [run(sched, p) for p in prompts]
    results: dict[int, tuple[str, str | None]] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(sched, prompts[i]))) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [results[i] for i in range(12)] == alone
    assert all(reason == "length" and len(text) == 12 for text, reason in alone)
    assert sched.executor.samplers == 0 and sched.active == 0


def test_stop_strings_eog_and_max_tokens():
    s = Scheduler(FakeExecutor(eog_after=8), parallel=2, ctx_per_seq=64).start()
    try:
        text, reason = run(s, [1, 2, 3])
        assert reason == "stop" and len(text) == 5  # 3 prompt tokens + 5 generated = 8, then end of generation
        full, _ = run(s, [1, 2, 3], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
        cut, reason = run(s, [1, 2, 3], SamplingParams(temperature=0, max_tokens=5, stop=[full[2:4]], ignore_eos=True))
        assert (cut, reason) == (full[:2], "stop")
    finally:
        s.close()


def test_cancel_frees_the_slot_and_the_sampler(sched):
    req = sched.submit([1, 2, 3], SamplingParams(temperature=0, max_tokens=100_000 // 1000))
    req.cancel()
    events = list(req.stream(timeout=5))
    assert events[-1].done and events[-1].finish_reason in ("cancelled", "length")
    deadline = time.time() + 5
    while (sched.active or sched.executor.samplers) and time.time() < deadline:
        time.sleep(0.01)
    assert sched.active == 0 and sched.executor.samplers == 0


def test_a_full_queue_refuses_at_once():
    gate = threading.Event()
    fake = FakeExecutor(n_seq=1)
    real_decode = fake.decode
    fake.decode = lambda rows: (gate.wait(10), real_decode(rows))
    s = Scheduler(fake, parallel=1, ctx_per_seq=64, max_queue=2).start()
    try:
        for _ in range(3):  # one in the slot (blocked in decode), two waiting
            s.submit([1, 2], GREEDY)
            time.sleep(0.05)
        with pytest.raises(QueueFullError):
            s.submit([1, 2], GREEDY)
    finally:
        gate.set()
        s.close()


def test_a_failing_step_fails_every_request_at_once_and_stays_failed():
    fatal: list[str] = []
    s = Scheduler(FakeExecutor(n_seq=2, fail_on_step=3), parallel=2, ctx_per_seq=64, max_queue=8,
                  on_fatal=fatal.append).start()
    reqs = [s.submit([1, 2, 3 + i], SamplingParams(temperature=0, max_tokens=30)) for i in range(5)]
    for req in reqs:  # two were running, three waiting: all end, with the reason, none hangs
        last = list(req.stream(timeout=5))[-1]
        assert last.done and last.finish_reason == "error"
        assert isinstance(last.error, SchedulerFailedError) and "injected failure on step 3" in str(last.error)
    assert fatal and "injected failure" in fatal[0]
    assert s.failed and "injected failure" in s.failed
    with pytest.raises(SchedulerFailedError, match="restarted"):
        s.submit([1], GREEDY)
    s.close()
    assert s.executor.closed


def test_close_never_frees_a_context_the_loop_may_still_touch():
    stuck = threading.Event()
    fake = FakeExecutor()
    fake.decode = lambda rows: stuck.wait(30)  # a native call that does not return
    s = Scheduler(fake, parallel=1, ctx_per_seq=64).start()
    s.submit([1, 2], GREEDY)
    time.sleep(0.1)
    s.close(timeout=0.2)
    assert not fake.closed
    stuck.set()


def test_bad_grammar_and_values_fail_in_the_callers_thread(sched):
    from autoglm.engine.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="grammar"):
        sched.submit([1], GREEDY, grammar="bad")
    with pytest.raises(InvalidArgumentError, match="temperature"):
        sched.submit([1], SamplingParams(temperature=3))
    with pytest.raises(InvalidArgumentError, match="empty"):
        sched.submit([], GREEDY)


def test_a_grammar_that_costs_too_much_per_token_ends_its_request_and_no_other():
    s = Scheduler(FakeExecutor(n_seq=2, n_batch=64), parallel=2, ctx_per_seq=128).start()
    try:
        costly = s.submit([1, 2], SamplingParams(max_tokens=40, temperature=0), grammar="slow")
        plain = s.submit([3, 4], SamplingParams(max_tokens=40, temperature=0))
        events = list(costly.stream())
        assert events[-1].done and isinstance(events[-1].error, RequestTooCostlyError)
        assert "ms per token to enforce" in str(events[-1].error)
        assert 0 < sum(1 for e in events if e.text) < 40
        done = list(plain.stream())[-1]
        assert done.finish_reason == "length" and done.error is None and s.failed is None
    finally:
        s.close()


def test_damaged_weights_end_the_request_with_an_error_not_empty_text():
    """Bit rot that keeps a file's size and mtime is not re-hashed at load: NaN scores used to become an
    empty answer and success. The first token's scores are checked; the engine keeps serving."""
    import numpy as np

    class Rotten(FakeExecutor):
        def logits(self, row: int) -> np.ndarray:
            return np.full(self.vocab, np.nan, dtype=np.float32)

    s = Scheduler(Rotten(n_seq=2, n_batch=48), parallel=2, ctx_per_seq=128).start()
    try:
        events = list(s.submit([1, 2, 3], SamplingParams(temperature=0, max_tokens=8)).stream(timeout=10))
        assert events[-1].finish_reason == "error" and isinstance(events[-1].error, DamagedModelError)
        assert "no usable scores" in str(events[-1].error)
        assert not "".join(e.text for e in events) and s.failed is None and s.active == 0
    finally:
        s.close()


def test_the_loop_runs_from_start_not_from_the_constructor():
    """Set-up (thread switch, callbacks) happens before the loop thread exists; a request before
    start() is a programming error said at once, not a request that waits forever."""
    fake = FakeExecutor(n_seq=1)
    s = Scheduler(fake, parallel=1, ctx_per_seq=64)
    assert s.thread.ident is None
    with pytest.raises(RuntimeError, match="start"):
        s.submit([1, 2], GREEDY)
    s.close()  # never started: closes at once and frees the context itself
    assert s.freed
    s = Scheduler(FakeExecutor(n_seq=1), parallel=1, ctx_per_seq=64).start()
    try:
        assert s.start() is s and s.thread.is_alive()  # twice is harmless
        assert run(s, [1, 2])[1] in ("stop", "length")
    finally:
        s.close()
