"""The step planner under random arrival / cancel / finish / disconnect sequences (hypothesis),
checked against a fake executor that holds each sequence's KV cells: never more rows than the
batch, each sequence's tokens in order, no slot or KV leak, FIFO admission, no starvation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoglm.engine.errors import ContextOverflowError, InvalidArgumentError, QueueFullError
from autoglm.engine.scheduler.step_planner import Job, SlotState, StepPlanner
from tests.fakes import FakeExecutor

PREFIXES = [[], [5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 7, 20, 21]]  # shared system prompts

op = st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, len(PREFIXES) - 1), st.integers(1, 150), st.integers(1, 12),
              st.sampled_from([False] * 4 + [True])),  # some exact: alone and cold (classify by a tuned prompt)
    st.tuples(st.just("step")),
    st.tuples(st.just("step")),
    st.tuples(st.just("cancel"), st.integers(0, 1000)),  # a client that disconnects or cancels
    st.tuples(st.just("finish"), st.integers(0, 1000)),  # a stop string or end of generation
)


class Driver:
    """Does what the scheduler thread does with the planner, synchronously."""

    def __init__(self, n_slots: int, n_batch: int, ctx: int, copy_period: int | None = None) -> None:
        self.planner = StepPlanner(n_slots, n_batch, ctx, max_queue=1000, min_chunk=8)
        self.fake = FakeExecutor(n_seq=n_slots, n_batch=n_batch, copy_period=copy_period)
        self.enqueued: list[Job] = []
        self.admitted: list[Job] = []
        self.ended: set[int] = set()
        self.dropped: set[int] = set()

    def arrive(self, prefix: int, length: int, max_tokens: int, exact: bool = False) -> None:
        prompt = PREFIXES[prefix] + [1 + (length * 7 + i) % 40 for i in range(length)]
        job = Job(prompt, max_tokens, owner=len(self.enqueued), speculate=length % 2 == 0 and not exact, exact=exact)
        self.planner.enqueue(job)
        self.enqueued.append(job)

    def step(self) -> None:
        before = {id(s.job) for s in self.planner.slots if s.job}
        step = self.planner.plan()
        new = [s for s in self.planner.slots if s.job is not None and id(s.job) not in before]
        self.admitted += [s.job for s in sorted(new, key=lambda s: s.order)]  # the planner's admission order
        for seq, keep in step.trims:
            self.fake.trim(seq, keep)
        for slot in new:
            if slot.current.exact:
                assert (slot.seq, 0) in step.trims, "an exact job reused cells"
        if not step.rows:
            return
        exact = {s.seq for s in self.planner.slots if s.job is not None and s.job.exact}
        if exact:
            assert {row.seq for row in step.rows} == exact and len(exact) == 1, "an exact job shared its step"
        self.fake.decode(step.rows)
        for seq, keep in step.pads:
            self.fake.trim(seq, keep)
        self.planner.observe(0.01)
        for slot in step.sample:
            if not slot.draft:
                self.planner.accept(slot, self.fake.sample(None, slot.row))
                if slot.produced >= slot.max_tokens:
                    self.ended.add(self.planner.release(slot).owner)
                continue
            emit, keep = self.planner.verified(slot, [self.fake.sample(None, r) for r in (slot.row, *slot.draft_rows)])
            self.fake.trim(slot.seq, keep)
            for i, token in enumerate(emit):
                self.planner.accept(slot, token, evaluated=i < len(emit) - 1)
                if slot.produced >= slot.max_tokens:
                    self.ended.add(self.planner.release(slot).owner)
                    self.fake.trim(slot.seq, len(slot.cached))
                    break
        self.check()

    def pick_active(self, n: int):
        active = self.planner.active
        return active[n % len(active)] if active else None

    def cancel(self, n: int) -> None:
        waiting = list(self.planner.waiting)
        if waiting and n % 2:
            job = waiting[n % len(waiting)]
            self.planner.drop_waiting(job)
            self.dropped.add(job.owner)
        elif (slot := self.pick_active(n)) is not None:
            self.ended.add(self.planner.release(slot).owner)

    def finish(self, n: int) -> None:
        slot = self.pick_active(n)
        if slot is not None and slot.state is SlotState.DECODE:
            self.ended.add(self.planner.release(slot).owner)

    def check(self) -> None:
        for slot in self.planner.slots:
            kv = self.fake.kv[slot.seq]
            cells = slot.cached[:-1] if slot.fresh else slot.cached
            assert kv == cells, f"seq {slot.seq}: executor holds {len(kv)} cells, planner thinks {len(cells)}"
            if slot.job is not None:
                n = min(len(slot.job.prompt), len(slot.cached))
                assert slot.cached[:n] == slot.job.prompt[:n], "a sequence's tokens out of order"
                assert slot.pending == slot.job.prompt[len(slot.cached):] or slot.state is SlotState.DECODE

    def drain(self) -> int:
        steps = 0
        while self.planner.busy:
            self.step()
            steps += 1
            assert steps < 5000, "starvation: requests still waiting after 5000 steps"
        return steps


@settings(max_examples=150, deadline=None)
@given(n_slots=st.integers(1, 8), n_batch=st.sampled_from([24, 40, 64]), ops=st.lists(op, max_size=80),
       copy_period=st.sampled_from([None, 3, 7]))
def test_random_traffic_keeps_every_invariant(n_slots, n_batch, ops, copy_period):
    """Half the requests speculate; with a copying fake model their drafts are mostly accepted."""
    if n_batch < n_slots + 8:
        n_batch = n_slots + 8
    d = Driver(n_slots, n_batch, ctx=256, copy_period=copy_period)
    for kind, *args in ops:
        getattr(d, kind)(*args)
    d.drain()
    d.check()
    # every request ended exactly once, either dropped from the queue or released from a slot
    assert d.ended | d.dropped == {j.owner for j in d.enqueued}
    assert not d.ended & d.dropped
    # FIFO admission: jobs entered slots in the order they arrived (those dropped never did)
    order = [j.owner for j in d.admitted]
    assert order == sorted(order)
    assert all(s.state is SlotState.IDLE and s.job is None for s in d.planner.slots)
    assert d.fake.max_rows <= n_batch


def test_sixty_four_streams_and_long_prompts_fit_the_batch():
    """The case that aborted the server: every slot decoding while a long prompt prefills."""
    d = Driver(64, 512, ctx=2048)
    for i in range(128):
        d.arrive(1, 5 + (i * 97) % 1500, 20)
    d.drain()
    assert d.fake.max_rows == 512  # full batches, never more
    assert len(d.ended) == 128


def test_prefix_reuse_keeps_shared_cells_and_trims_the_rest():
    d = Driver(1, 64, ctx=256)
    d.arrive(1, 10, 3)
    d.drain()
    first = list(d.planner.slots[0].cached)
    d.arrive(1, 10, 3)  # the same prompt again: all but its last token come from the cache
    step = d.planner.plan()
    assert step.trims == [(0, len(PREFIXES[1]) + 10 - 1)]
    assert len(step.rows) == 1 and first[: len(PREFIXES[1]) + 9] == d.planner.slots[0].cached[:-1]
    assert d.planner.slots[0].reused == len(PREFIXES[1]) + 9


def test_admission_picks_the_slot_with_the_longest_shared_prefix():
    d = Driver(3, 64, ctx=256)
    for prefix in (0, 1, 2):
        d.arrive(prefix, 4, 1)
    d.drain()
    d.arrive(2, 9, 1)
    d.planner.plan()
    slot = next(s for s in d.planner.slots if s.job is not None)
    assert slot.cached[:5] == PREFIXES[2]


def _step(p: StepPlanner, elapsed_s: float):
    """One planned step that took ``elapsed_s``: every sampled slot gets a token, as the scheduler does."""
    step = p.plan()
    for slot in step.sample:
        p.accept(slot, 7)
    p.observe(elapsed_s)
    return step


def _slow_prefill_beside_a_stream() -> StepPlanner:
    """A stream running (50 ms a step alone) while a long prompt prefills in 1 s steps: the chunk
    shrinks to its minimum."""
    p = StepPlanner(2, 512, 4096, min_chunk=32)
    p.enqueue(Job([1, 2], 1000))
    _step(p, 0.05)
    _step(p, 0.05)  # the stream alone
    p.enqueue(Job(list(range(1000, 5000)), 5))
    for _ in range(5):
        _step(p, 1.0)
    assert p.chunk == 32
    return p


def test_prompt_chunks_shrink_when_steps_run_slow_and_grow_back():
    p = _slow_prefill_beside_a_stream()
    step = _step(p, 0.001)
    assert len(step.rows) == 1 + 32  # one decode row, one small prompt chunk
    assert p.chunk == 64


def test_the_chunk_target_follows_streams_that_are_slow_on_their_own():
    """64 streams on 2 cores take longer than STEP_TARGET_S without any prompt: the target is then
    a multiple of their own step, and prompts still get large chunks."""
    p = _slow_prefill_beside_a_stream()
    p.decode_step_s = 0.5  # streams alone: 0.5 s a step
    for _ in range(10):
        _step(p, 0.9)  # under 2 x 0.5 s: the chunk grows
    assert p.chunk > 256


def test_a_lone_prompt_gets_the_whole_batch_whatever_the_last_streams_left_the_chunk_at():
    """The chunk shrinks to protect running streams; once they are gone, a new prompt must not be
    split into small chunks (slower, and llama.cpp rounds a prompt differently when it is split
    differently: with speculation on, the first token of a greedy reply changed)."""
    p = _slow_prefill_beside_a_stream()
    for slot in p.slots:
        if slot.job is not None:
            p.release(slot)
    p.enqueue(Job(list(range(6000, 6299)), 5))  # nothing shared with the cells left behind
    step = p.plan()
    assert len(step.rows) == 299  # the whole prompt in one step


def test_an_exact_job_waits_for_the_batch_to_empty_then_runs_alone_and_cold():
    """Nothing overtakes it, nothing joins it, and its prompt is evaluated from scratch even where
    the same prompt's cells are still there: the rows of a step are what the same text gets each time."""
    p = StepPlanner(3, 64, 256, min_chunk=8)
    prompt = list(range(100, 140))
    p.enqueue(Job(prompt, 2))
    _step(p, 0.01)  # prefilled: one token sampled
    p.enqueue(Job(prompt, 2, exact=True))
    p.enqueue(Job([1, 2, 3], 2))
    assert [s.state for s in p.slots].count(SlotState.IDLE) == 2
    step = _step(p, 0.01)  # the first job's last token; the exact one waits, and so does the one behind it
    assert len(step.rows) == 1 and len(p.waiting) == 2
    for slot in p.active:
        p.release(slot)
    step = _step(p, 0.01)
    (slot,) = p.active
    assert slot.current.exact and step.trims == [(slot.seq, 0)] and len(step.rows) == len(prompt)
    assert len(p.waiting) == 1  # admitted alone
    while slot.state is not SlotState.IDLE:
        step = _step(p, 0.01)
        assert {row.seq for row in step.rows} == {slot.seq}
        if slot.produced >= 2:
            p.release(slot)
    assert _step(p, 0.01).rows and not p.waiting


def test_an_exact_job_behind_a_long_stream_waits_a_bounded_time_then_runs_batched():
    """A classify-by-prompt request must not wait out a long chat reply, nor hold everyone behind it."""
    from autoglm.engine.scheduler.step_planner import EXACT_PATIENCE

    p = StepPlanner(2, 64, 4096, min_chunk=8)
    p.enqueue(Job([1, 2, 3], 100_000))  # a stream that will not end soon
    _step(p, 0.01)
    exact = Job(list(range(100, 140)), 2, exact=True)
    p.enqueue(exact)
    p.enqueue(Job([4, 5], 2))
    for _ in range(EXACT_PATIENCE):
        step = _step(p, 0.01)
        assert len(step.rows) == 1 and len(p.waiting) == 2  # held: the exact one and the one behind it
    step = _step(p, 0.01)
    assert not exact.exact and exact in [s.job for s in p.active]  # batched now, beside the stream


def test_queue_limits_and_bad_prompts():
    p = StepPlanner(1, 64, 128, max_queue=2)
    p.enqueue(Job([1], 1))
    p.enqueue(Job([1], 1))
    with pytest.raises(QueueFullError):
        p.enqueue(Job([1], 1))
    with pytest.raises(InvalidArgumentError):
        p.check([])
    with pytest.raises(ContextOverflowError):
        p.check(list(range(128)))
    with pytest.raises(InvalidArgumentError):
        StepPlanner(64, 64, 128)  # a batch that cannot hold every stream plus a chunk


def test_forget_empties_every_slot_and_returns_every_job():
    d = Driver(2, 64, ctx=256)
    for i in range(5):
        d.arrive(0, 10 + i, 50)
    d.step()
    jobs = d.planner.forget()
    assert sorted(j.owner for j in jobs) == list(range(5))
    assert not d.planner.busy and all(not s.cached for s in d.planner.slots)


# step times measured on this 2-core CPU with SmolLM2-135M Q4_1 (ms, one graph of n rows)
MEASURED_MS = {1: 6.5, 2: 13.4, 3: 16.5, 4: 18.7, 5: 23.4, 6: 25.6, 7: 28.9, 8: 27.7}


def _gapped(finished: set[int], ctx: int = 256) -> Driver:
    """Eight streams decoding, then those in ``finished`` end: their sequences leave gaps."""
    from autoglm.engine.scheduler.speculation import StepCost

    d = Driver(8, 64, ctx=ctx)
    d.planner.row_cost = cost = StepCost()
    cost.times = {n: ms / 1000 for n, ms in MEASURED_MS.items()}
    for i in range(8):
        d.arrive(0, 5 + i, 2 if i in finished else 40)
        d.enqueued[-1].speculate = False
    d.step()
    while any(s.job is not None and s.seq in finished for s in d.planner.slots):
        d.step()
    return d


def test_a_gap_in_the_running_sequences_is_padded_when_one_graph_is_cheaper():
    """Streams 0-2 and 4-7 would run as two graphs (3 + 4 rows: 35 ms); with a throwaway row for
    idle stream 3 they run as one of 8 (28 ms). The padding cell is dropped after the step."""
    d = _gapped({3})
    held = len(d.fake.kv[3])
    step = d.planner.plan()
    assert [r.seq for r in step.rows] == list(range(8)) and step.single
    assert step.pads == [(3, held)] and not step.rows[3].logits
    assert all(step.rows[s.row].seq == s.seq for s in step.sample)  # each stream's logits row follows it
    d.fake.decode(step.rows)
    for seq, keep in step.pads:
        d.fake.trim(seq, keep)
    assert len(d.fake.kv[3]) == held


def test_gaps_stay_when_split_graphs_are_cheaper_or_a_stream_is_full():
    spread = _gapped({1, 3, 5, 7})  # four single rows (26 ms) beat one graph of seven (29 ms)
    step = spread.planner.plan()
    assert [r.seq for r in step.rows] == [0, 2, 4, 6] and not step.pads and not step.single
    full = _gapped({3}, ctx=64)
    full.planner.slots[3].cached = list(range(64))  # no cell left to lend
    full.fake.kv[3] = list(range(64))
    step = full.planner.plan()
    assert 3 not in [r.seq for r in step.rows] and not step.pads


def test_gaps_are_filled_where_only_a_long_graph_pays():
    """Sixteen streams, every other one ended: joining two neighbours costs more than it saves
    (13 ms as two single rows, 14.6 as one of three), yet one graph of fifteen rows (38 ms) beats
    eight single rows (52 ms): the choice is made over the whole batch, not pair by pair."""
    from autoglm.engine.scheduler.speculation import StepCost

    d = Driver(16, 64, ctx=256)
    d.planner.row_cost = cost = StepCost()
    cost.times = {n: ms / 1000 for n, ms in {**MEASURED_MS, 16: 40.0}.items()}
    for i in range(16):
        d.arrive(0, 5 + i, 40 if i % 2 == 0 else 2)
        d.enqueued[-1].speculate = False
    d.step()
    while any(s.job is not None and s.seq % 2 for s in d.planner.slots):
        d.step()
    step = d.planner.plan()
    assert [r.seq for r in step.rows] == list(range(15)) and len(step.pads) == 7 and step.single


def test_a_draft_model_is_asked_as_data_and_its_answer_placed_after_the_stream():
    """With a draft model the plan says what to draft (sequence, tokens, k) and places nothing; the
    drafts come back to ``complete``, which puts them after the stream's row and before any prompt
    chunk. A shorter answer than asked is used as it is."""
    p = StepPlanner(2, 64, 256, draft_model=True)
    p.draft_cost, p.row_cost = 0.0, lambda n: 1.0  # rows and drafts cost nothing: drafting pays
    p.enqueue(Job([1, 2, 3, 4], 50, owner=0, speculate=True))
    for slot in p.plan().sample:  # prefill the prompt
        p.accept(slot, 9)
    p.enqueue(Job([8, 8, 8], 50, owner=1, speculate=True))  # arrives now: prefilling, so no drafts this step
    step = p.begin()
    assert step.draft_asks == [] and len(step.rows) == 1
    p.complete(step, {})
    for slot in step.sample:
        p.accept(slot, 9)
    p.release(p.slots[1])
    step = p.begin()
    ((seq, tokens, k),) = step.draft_asks
    assert (seq, tokens) == (0, [1, 2, 3, 4, 9, 9]) and k >= 2
    assert len(step.rows) == 1  # nothing placed before the answer
    p.complete(step, {0: [5, 6]})
    assert p.slots[0].draft == [5, 6] and p.slots[0].draft_rows == [1, 2]
    assert [r.token for r in step.rows] == [9, 5, 6] and [r.pos for r in step.rows] == [5, 6, 7]
