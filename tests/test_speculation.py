"""Speculative decoding from the context (fast tier): the drafter on its own, then the scheduler
over a fake executor that checks every KV cell, with a fake model that repeats its context (so
drafts are accepted) and one that does not (so they are rejected and their cells removed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from autoglm.engine.sampling import SamplingParams
from autoglm.engine.scheduler.batch import Scheduler
from autoglm.engine.scheduler.speculation import (
    MAX_K,
    MEMORY_N,
    PAUSE_TOKENS,
    PRIOR_ROW_COST,
    PROBE_GAP,
    Drafter,
    NgramMemory,
    StepCost,
    best_k,
)
from tests.conftest import pinned
from tests.fakes import FakeExecutor

GREEDY = SamplingParams(max_tokens=60, temperature=0)
GREEDY_LONG = SamplingParams(max_tokens=120, temperature=0)


def test_the_drafter_proposes_what_followed_the_last_ngram():
    d = Drafter()
    tokens = [1, 2, 3, 4, 5, 6, 7, 9, 9, 2, 3, 4]
    assert d.draft(tokens, 2, row_cost=0.0) == []  # a first probe needs a 4-token match; (2, 3, 4) is 3
    probe = Drafter()
    assert probe.draft([1, 2, 3, 4, 5, 6, 1, 2, 3, 4], 10, row_cost=0.0) == [5, 6, 1, 2]  # at most 4 long
    d.observe(1, 1)  # proven: 3-token matches draft too, and long
    assert d.draft(tokens, 2, row_cost=0.0) == [5, 6]
    assert d.draft(tokens, 10, row_cost=0.0) == [5, 6, 7, 9, 9, 2, 3, 4]  # to the end of what is known
    assert Drafter().draft([1, 2, 3, 4], 5) == []  # nothing repeats
    tokens += [5, 6, 7, 9]  # grows incrementally: the newest occurrence wins
    assert d.draft(tokens, 3, row_cost=0.0) == [9, 2, 3]


def test_the_draft_length_pays_for_itself_at_the_measured_row_cost():
    assert best_k(0.9, 0.01, 10) == 10 and best_k(0.99, 0.01, 99) == MAX_K  # a GPU: an extra row is nearly free
    assert best_k(0.9, 0.5, 10) >= 3  # a slow CPU, a copying reply
    assert best_k(0.3, 0.5, 10) == 0  # a slow CPU, free-form text: drafting would cost
    assert best_k(0.99, 0.5, 2) == 2  # never past the limit
    assert best_k(0.9, 1.3, 10, rows=1) >= 3 and best_k(0.9, 1.3, 10, rows=8) == 0  # a full batch: only certainties


def test_a_copying_reply_reaches_the_matrix_kernels_of_a_real_size_model():
    """Qwen2.5-Coder-1.5B Q4_K_M on a 2-core AVX-512 EPYC, every row with logits (ms, measured):
    16 rows cost less than 15, as llama.cpp switches to matrix kernels, and 33 rows yield the most
    tokens per second. A draft cap of 10 (tuned on the 135M model) never got there: 1.1x plain on
    code edits where llama-server's ngram-simple (16 drafts) ran 2x."""
    measured = {1: 39, 2: 64, 4: 102, 8: 234, 10: 269, 12: 298, 14: 325, 15: 351, 16: 291, 17: 334,
                20: 368, 24: 430, 32: 492, 33: 526}
    cost = StepCost()
    for rows, ms in measured.items():
        cost.observe(rows, ms / 1000)
    assert best_k(0.99, cost, 64) >= 15  # copying code, nearly every draft accepted
    assert best_k(0.9, cost, 64) < 15  # a tenth of drafts missing: the long ones no longer pay
    assert best_k(0.5, cost, 64) == 0


def test_step_cost_is_a_measured_curve_and_long_drafts_stay_possible():
    """A CPU where the second row costs much more than the tenth (vector -> matrix kernels): a
    straight line through short drafts would forbid the long ones that pay; the curve does not."""
    cost = StepCost()
    assert cost(3) == pytest.approx(1 + PRIOR_ROW_COST * 3)  # nothing measured: the prior
    for _ in range(20):
        cost.observe(1, 0.007)
        cost.observe(2, 0.012, 1)
    assert best_k(0.95, cost, 10) == 10  # beyond 2 rows unmeasured: hoped cheap, so tried
    for _ in range(20):
        cost.observe(11, 0.014, 10)
    assert cost(6) == pytest.approx(0.012 + 0.002 * 4 / 9)  # interpolated
    assert best_k(0.95, cost, 10) == 10 and best_k(0.3, cost, 10) == 0  # a copying reply; free text
    cost.observe(11, 10.0, 10)  # one step while another process had the cores
    assert cost(11) < 0.03 and best_k(0.95, cost, 10) == 10


def test_acceptance_is_learnt_per_sequence_and_forgotten_after_a_pause():
    d = Drafter()
    for _ in range(10):
        d.observe(4, 0)
    assert d.p < 0.25 and d.draft([1, 2, 1, 2, 1, 2], 5, row_cost=0.5) == []
    for _ in range(PAUSE_TOKENS):
        d.draft([1, 2, 1, 2, 1, 2], 5, row_cost=0.5)
    assert d.p == Drafter().p  # the prior again: the text may have turned to copying


def test_probes_that_find_nothing_come_ever_more_rarely():
    """Copy-heavy traffic makes recent acceptance high; a new sequence of free text starts from it.
    After a probe that finds nothing it waits 8 tokens before the next, then 16, 32, 64 at most."""
    from autoglm.engine.scheduler.speculation import Acceptance

    shared = Acceptance()
    for _ in range(200):
        shared.observe(8, 8)
    d = Drafter()
    d.reset(shared.prior())
    dear = _curve({1: 1.0, 2: 2.06, 3: 2.53, 4: 2.93, 5: 3.54})  # Q4_1 here: one-row steps by rows
    text = [7, 1, 2, 3, 4, 9, 1, 2, 3, 4]
    probes = []
    for token in range(200):
        if probe := d.draft(text, 10, dear):
            assert probe == [9, 1, 2, 3][:len(probe)]  # what followed the last 4 tokens
            probes.append(token)
            d.observe(len(probe), 0)
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert gaps[0] == PROBE_GAP and min(gaps) >= PROBE_GAP and gaps[-1] >= 8 * PROBE_GAP
    assert len(probes) <= 6  # of 200 tokens: each miss cost a 4-row step, about 2.5 one-row steps here
    d.observe(3, 2)  # an accepted draft ends the backoff
    assert d.misses == 0 and d.draft(text, 10, dear)


QWEN_1_5B = {1: 0.039, 2: 0.064, 4: 0.102, 8: 0.234, 16: 0.291, 33: 0.526}  # Q4_K_M, 2-core EPYC, s per step


def test_the_draft_follows_the_occurrence_that_agrees_furthest_back():
    """Code repeats short n-grams everywhere: the latest occurrence of the last four tokens is
    often another place than the one being copied; the one agreeing furthest back is the source."""
    source = [50, 51, 52, 53, 54, 1, 2, 3, 4, 60, 61, 62]
    elsewhere = [70, 71, 1, 2, 3, 4, 80, 81, 82]
    d = Drafter()
    d.observe(1, 1)  # proven, so the length is not a probe's
    assert d.draft(source + elsewhere + [50, 51, 52, 53, 54, 1, 2, 3, 4], 3, row_cost=0.0) == [60, 61, 62]
    fresh = Drafter()
    fresh.observe(1, 1)
    assert fresh.draft(source + elsewhere + [99, 1, 2, 3, 4], 3, row_cost=0.0) == [80, 81, 82]  # a tie: the latest


def test_a_long_match_drafts_long_on_a_first_request():
    """A first request at real size: a code edit on Qwen2.5-Coder-1.5B copies its function. Once
    the reply agrees with the source for MATCH_EVIDENCE tokens it drafts long at once, not 4-token
    probes until a draft is accepted (plain speed for dozens of tokens, where ngram-mod drafted 48)."""
    from autoglm.engine.scheduler.speculation import PROBE_K, Acceptance

    shared = Acceptance()
    for _ in range(200):
        shared.observe(2, 0)  # free chats before: recent acceptance low
    code = list(range(100, 160))
    short, long_ = Drafter(), Drafter()
    short.reset(shared.prior())
    long_.reset(shared.prior())
    measured = _curve(QWEN_1_5B)
    assert 0 < len(short.draft(code + code[:5], 64, measured)) <= PROBE_K  # 5 tokens agree: a probe
    seq = code + code[:30]
    drafted = long_.draft(seq, 64, measured)
    assert len(drafted) >= 15 and drafted == seq[30:30 + len(drafted)]  # the copy, then what followed it


def test_a_reply_asked_for_again_is_drafted_from_the_shared_memory():
    """Regenerating an answer, or editing code the model wrote: the earlier reply, released by its
    sequence, drafts the new one from its first MEMORY_N tokens, long and at once."""
    memory = NgramMemory()
    reply = list(range(1000, 1080))
    memory.add([7] * 20 + reply)
    d = Drafter()
    prompt = [8, 9, 10, 11]  # the new request's prompt holds nothing of the reply
    assert d.draft(prompt + reply[:MEMORY_N - 1], 64, _curve(QWEN_1_5B), memory=memory) == []
    drafted = d.draft(prompt + reply[:MEMORY_N], 64, _curve(QWEN_1_5B), memory=memory)
    assert len(drafted) >= 15 and drafted == reply[MEMORY_N:MEMORY_N + len(drafted)] and d.recalled
    for _ in range(20):
        memory.observe(30, 30)  # recalls lately accepted whole (the same question again, at temperature 0)
    assert memory.p > 0.99
    assert len(Drafter().draft(prompt + reply[:MEMORY_N], 64, _curve(QWEN_1_5B), memory=memory)) > len(drafted)


def test_only_greedy_streams_draft_from_other_replies():
    """A sampled stream verifies drafts by the rejection rule, which draws random numbers per
    drafted token: drafts recalled from another request would make the same seed give another
    text (the second of two seeded requests did, in tests/test_chat.py)."""
    from autoglm.engine.scheduler.step_planner import OPENING, Job, StepPlanner

    reply = list(range(500, 540))
    for recall, expect in ((False, []), (True, reply[MEMORY_N:MEMORY_N + 4])):
        planner = StepPlanner(n_slots=1, n_batch=64, ctx_per_seq=256)
        planner.memory.add(reply)
        planner.row_cost = 0.0  # rows are free: draft whatever is known
        planner.enqueue(Job([7, 8, *reply[:MEMORY_N - OPENING - 1]], 30, speculate=True, greedy=recall))
        planner.plan()
        slot = planner.slots[0]
        for token in reply[MEMORY_N - OPENING - 1:MEMORY_N]:  # past the opening, which greedy replies never draft
            planner.accept(slot, token)
        step = planner.plan()
        assert slot.draft[:4] == expect, (recall, slot.draft)
        assert len(step.rows) == 1 + len(slot.draft)


def test_a_prompt_asked_again_drafts_what_followed_it_in_its_slot_long_from_the_first_draft():
    """The same prompt again at temperature 0 (a regenerated answer, a repeated request): its slot
    still holds the earlier reply after it, which is drafted at once as a sure copy, where the
    shared memory's recall starts at its own recent acceptance. The draft stops at a token that
    nearly tied the first time (it may go the other way now); a reply that goes another way in its
    opening, or a prompt asked before at a temperature, drafts nothing from it."""
    from autoglm.engine.scheduler.step_planner import FRAGILE, OPENING, Job, StepPlanner

    prompt, reply = [7, 8, 9, 10], list(range(500, 560))
    cases = [(reply[:OPENING + 1], None, True, reply[OPENING + 1:OPENING + 1 + 30]),
             (reply[:OPENING + 1], 20, True, reply[OPENING + 1:21]),  # up to the near-tie, with it
             (list(range(900, 901 + OPENING)), None, True, []),
             (reply[:OPENING + 1], None, False, [])]
    for opening, tie, greedy_before, expect in cases:
        planner = StepPlanner(n_slots=1, n_batch=64, ctx_per_seq=256)
        planner.row_cost = _curve(QWEN_1_5B)
        slot = planner.slots[0]
        for tokens in (reply, opening):
            planner.enqueue(Job(prompt, 60, speculate=True, greedy=greedy_before or tokens is opening))
            planner.plan()
            for i, token in enumerate(tokens):
                planner.accept(slot, token, margin=FRAGILE / 2 if i == tie else 2 * FRAGILE)
            if tokens is reply:
                planner.release(slot)
        planner.memory.next.clear()  # not from the shared memory
        planner.plan()
        assert slot.draft[:30] == expect, (tie, greedy_before, slot.draft)
        assert len(slot.draft) >= 30 or tie or not expect


def test_the_shared_memory_recalls_up_to_a_near_tie_and_on_after_it():
    """A token that nearly tied when written is not recalled (it may fall the other way now), and
    it forgets what an earlier reply had there; after the model decides it, the recall goes on."""
    memory = NgramMemory(n=4)
    reply = list(range(100, 140))
    memory.add([9, 9, 9, 9, *[7] * 3, *reply[:20], 55, *reply[21:]])  # an earlier reply: 55 at index 20
    memory.add([9, 9, 9, 9, *[7] * 3, *reply], fragile={4 + 3 + 20})  # then reply[20], nearly tied
    assert memory.follow([7, 7, 7, *reply[:10]], 64) == reply[10:20]
    assert memory.follow([7, *reply[:21]], 64) == reply[21:]


def test_a_reply_that_left_its_earlier_one_trusts_recalls_no_more_than_its_own_drafts():
    """A regenerated reply that went another way than the first time: the shared memory holds the
    first one too, and its keys recur in the new reply without what came before them. Its recalls
    are then probes, not sure copies; and copied drafts, however well accepted, leave the
    sequence's own estimate (which its lookup drafts go by) where it was. A recall accepted whole
    means the reply is back on the earlier text: sure again."""
    memory = NgramMemory()
    earlier = list(range(1000, 1100))
    memory.add([5] * MEMORY_N + earlier)
    for _ in range(30):
        memory.observe(40, 40)
    prompt = [1, 2, 3]
    cost = _curve(QWEN_1_5B)
    d = Drafter()
    d.expect(list(range(2000, 2100)), len(prompt))
    assert d.draft(prompt + list(range(2000, 2010)), 64, cost, memory=memory) and d.copied
    p = d.p
    d.observe(20, 20)
    assert d.p == p and not d.proven  # a copy's acceptance is the earlier reply's, not this text's
    strayed = d.draft(prompt + list(range(2000, 2010)) + earlier[:MEMORY_N], 64, cost, memory=memory)
    assert d.strayed and d.recalled and 0 < len(strayed) <= 4  # a probe's length
    fresh = Drafter().draft(prompt + earlier[:MEMORY_N], 64, cost, memory=memory)
    assert len(fresh) > 30  # the same recall in a reply that never strayed: long
    d.observe(len(strayed), len(strayed))  # the probe held: back on the earlier reply's text
    assert not d.strayed


def test_the_shared_memory_is_bounded():
    memory = NgramMemory(n=4, capacity=100)
    for start in range(0, 1000, 50):
        memory.add(list(range(start, start + 60)))
        assert len(memory.next) <= 100
    assert memory.follow([950, 951, 952, 953], 5) == [954, 955, 956, 957, 958]  # the newest is kept
    assert memory.follow([0, 1, 2, 3], 5) == []  # the oldest is gone


def test_the_planner_remembers_released_replies_not_prompts():
    from autoglm.engine.scheduler.step_planner import Job, StepPlanner

    planner = StepPlanner(n_slots=1, n_batch=64, ctx_per_seq=256)
    planner.enqueue(Job(list(range(40)), 30))
    planner.plan()
    slot = planner.slots[0]
    for token in range(500, 520):
        planner.accept(slot, token)
    planner.release(slot)
    assert planner.memory.follow(list(range(500, 500 + MEMORY_N)), 10) == [516, 517, 518, 519]
    assert planner.memory.follow(list(range(MEMORY_N)), 3) == []  # the prompt is its own sequence's to index


def _curve(times: dict[int, float]) -> StepCost:
    cost = StepCost()
    cost.times = dict(times)
    return cost


def _run(copy_period: int | None, speculative: bool, prompts: list[list[int]],
         params: list[SamplingParams]) -> tuple[list[list[str]], dict[str, int]]:
    # a step's fixed cost dominates, as for a small model on a GPU: drafts are nearly free alone and cost a
    # second graph beside other streams
    s = Scheduler(FakeExecutor(n_seq=3, n_batch=48, copy_period=copy_period, step_s=0.002, row_s=0.00002),
                  parallel=3, ctx_per_seq=128, speculative=speculative).start()
    try:
        reqs = [s.submit(p, sp) for p, sp in zip(prompts, params, strict=True)]
        texts = [[e.text for e in r.stream()] for r in reqs]
        return texts, dict(s.stats)
    finally:
        s.close()


@pytest.mark.parametrize("copy_period", [5, 3, None])
def test_speculation_changes_steps_never_text(copy_period):
    """5: the model repeats the prompt's period, drafts are accepted; 3: a prompt whose repeats
    propose some drafts the model rejects (their cells must go); None: a model of its own."""
    first = [5, 2, 3, 1, 1, 3, 4, 5, 1, 3, 4, 3, 5, 2] if copy_period == 3 else [3, 1, 4, 1, 5] * 6
    prompts = [first, [2, 7, 1, 8, 2, 8], [1, 1, 2, 3, 5, 8, 13]]
    # the first runs alone at the end, where its drafts pay (beside other streams they cost a second graph)
    params = [GREEDY_LONG, GREEDY, SamplingParams(max_tokens=10, temperature=0.8, seed=1)]
    plain, plain_stats = _run(copy_period, False, prompts, params)
    spec, spec_stats = _run(copy_period, True, prompts, params)
    assert ["".join(t) for t in spec] == ["".join(t) for t in plain]
    assert spec_stats["tokens_generated"] == plain_stats["tokens_generated"]
    assert spec_stats["draft_tokens"] > 0
    if copy_period == 5:
        assert spec_stats["draft_accepted"] > 25 and spec_stats["steps"] < plain_stats["steps"] * 0.8
    # (rejected drafts and their dropped cells: the draft-model test with a wrong guesser, and the real model)


class TornExecutor(FakeExecutor):
    """A copying model torn between two tokens where its reply opens (the 4th token): a one-row
    step picks the copy, a many-row step the other. On the 1.5B a 0.04 lead of "def" over "#"
    three tokens into a code edit flipped inside a 64-row step, and the reply added a comment
    line that plain decoding did not."""

    TORN_AT = 33  # cells before the torn decision: a 30-token prompt and 3 reply tokens

    def decode(self, rows: list) -> None:
        super().decode(rows)
        self.torn: dict[int, bool] = {}
        per_seq = {row.seq: sum(r.seq == row.seq for r in rows) for row in rows}
        for i, row in enumerate(rows):
            if row.logits and row.pos + 1 == self.TORN_AT:  # this row sees TORN_AT cells
                self.torn[i] = True
                if per_seq[row.seq] > 1:
                    self.outputs[i] = 1 + self.outputs[i] % (self.vocab - 1)

    def logits(self, row: int) -> np.ndarray:
        out = super().logits(row)
        if self.torn.get(row):  # the copy and the other token, 0.05 apart, the chosen one ahead
            other = 1 + self.outputs[row] % (self.vocab - 1)
            out[other] = 99.95
        return out


def test_a_near_tie_where_a_reply_opens_is_decided_as_one_row_steps_decide_it():
    """Nothing is drafted in a greedy reply's opening, so its ties fall as plain decoding's do."""
    prompt = [3, 1, 4, 1, 5] * 6
    memory = NgramMemory()
    memory.add(prompt[-MEMORY_N:] + [3, 1, 4, 1, 5] * 10)  # the reply asked for before: recalled at once, long
    texts = {}
    for speculative in (False, True):
        s = Scheduler(TornExecutor(n_seq=1, n_batch=48, copy_period=5), parallel=1, ctx_per_seq=160,
                      speculative=speculative).start()
        s.planner.memory = memory
        try:
            req = s.submit(prompt, SamplingParams(max_tokens=40, temperature=0))
            texts[speculative] = "".join(e.text for e in req.stream())
            if speculative:
                assert req.stats.accepted > 25  # the opening alone, then drafts
        finally:
            s.close()
    assert texts[True] == texts[False]


def test_a_stop_inside_accepted_drafts_ends_the_request_there():
    s = Scheduler(FakeExecutor(n_seq=1, n_batch=48, copy_period=4), parallel=1, ctx_per_seq=128).start()
    try:
        req = s.submit([1, 2, 3, 4] * 4, SamplingParams(max_tokens=7, temperature=0))
        events = list(req.stream())
        assert events[-1].finish_reason == "length" and req.stats.completion_tokens == 7
        assert s.executor.kv[0] == ([1, 2, 3, 4] * 6)[:16 + 6]  # the 7th token has no cell, no draft beyond it
    finally:
        s.close()


DOC = ("Invoice 2024-117 from Northwind Traders, 12 Harbour Road, Leith, dated 3 March 2024: 40 crates of "
       "oranges at 12.50 each, 15 crates of lemons at 9.80 each; payment due within 30 days to account "
       "GB29 NWBK 6016 1331 9268 19.")
PROMPTS = [f"Repeat this text exactly: {DOC}",
           f"Fix the spelling: {DOC.replace('crates', 'crtaes').replace('payment', 'paymnet')}",
           f"Extract the invoice number, the seller and the date from this document as JSON: {DOC}",
           "def area(w, h):\n    return w * h\n\nAdd type hints and a docstring to this function.",
           "Write a short poem about the sea.", "List the days of the week, one per line.",
           "Count from 1 to 30, separated by commas.", "What is the capital of France? Answer in one word.",
           "Explain what a prime number is.", "Translate to French: the cat sleeps on the warm windowsill.",
           "Write the alphabet in capital letters.", "Describe a sunrise in three sentences."]


@pytest.mark.slow
def test_real_model_text_is_identical_with_and_without_speculation(backend, monkeypatch):
    """Temperature 0 on the real model: drafts verified by the model itself change steps, not text.
    Rows are made to look free, so every lookup hit is drafted at full length (the most verifying)."""
    from autoglm.engine.tasks.chat import PromptBuilder

    builder = PromptBuilder(backend)
    scheduler = backend.scheduler
    monkeypatch.setattr(scheduler.planner, "row_cost", 0.0)
    outputs = {}
    try:
        for speculative in (False, True):
            scheduler.speculative = speculative
            before = dict(scheduler.stats)
            texts = []
            for prompt in PROMPTS:
                tokens = builder.tokens([{"role": "user", "content": prompt}])
                texts.append("".join(e.text for e in scheduler.submit(tokens, GREEDY_LONG).stream()))
            outputs[speculative] = texts
            drafted = scheduler.stats["draft_accepted"] - before["draft_accepted"]
        assert outputs[True] == outputs[False]
        assert drafted > 50  # the copy-heavy prompts were in fact sped up
    finally:
        scheduler.speculative = True



@pytest.mark.slow
def test_padding_rows_for_idle_streams_change_steps_never_text(default_model, monkeypatch):
    """Eight real streams, the fourth ending first: the others run with a throwaway row for its
    idle sequence (one graph instead of two). Texts are those of the same batch without padding,
    and the padding cells are gone afterwards (llama.cpp refuses a batch whose positions skip or
    repeat, and a left-over cell would change the idle stream's next reuse)."""
    from autoglm.engine import loader
    from autoglm.engine.scheduler.step_planner import StepPlanner
    from autoglm.engine.tasks.chat import PromptBuilder

    model = loader.load_scheduled(loader.prepare(None, pinned()), parallel=8, ctx_per_seq=512, speculative=False)
    try:
        scheduler = model.scheduler
        builder = PromptBuilder(model)
        prompts = [builder.tokens([{"role": "user", "content": p}]) for p in PROMPTS[:8]]
        params = [SamplingParams(max_tokens=4 if i == 3 else 40, temperature=0) for i in range(8)]

        def together() -> list[str]:
            with scheduler.lock:  # every run starts from empty streams: the same prompt pieces, the same slots
                scheduler.executor.clear()
                for slot in scheduler.planner.slots:
                    slot.cached = []
            reqs = [scheduler.submit(t, sp) for t, sp in zip(prompts, params, strict=True)]
            return ["".join(e.text for e in r.stream()) for r in reqs]

        monkeypatch.setattr(StepPlanner, "_padded", lambda self, rows: (rows, []))
        split = together()
        monkeypatch.undo()
        monkeypatch.setattr(scheduler.planner, "row_cost", 0.0)  # rows look free: every gap is padded
        padded = together()
        assert scheduler.stats["padding_rows"] > 20
        assert padded == split
        held = [len(slot.cached) for slot in scheduler.planner.slots]
        assert [llama_cells(scheduler.executor, seq) for seq in range(8)] == held
    finally:
        model.close()


def llama_cells(executor, seq: int) -> int:
    """How many positions llama.cpp holds for a sequence (its cells are 0..max)."""
    from autoglm.engine.backends.llama_lib import llama_cpp

    return llama_cpp.llama_memory_seq_pos_max(executor.memory, seq) + 1


def _run_draft(draft_vocab: int | None, params: list[SamplingParams], prompts: list[list[int]]):
    from autoglm.engine.scheduler.draft_model import ModelDrafter

    target = FakeExecutor(n_seq=3, n_batch=48, step_s=0.003, row_s=0.0001)  # a model 10x the draft's cost
    drafter = ModelDrafter(FakeExecutor(n_seq=3, n_batch=48, vocab=draft_vocab, step_s=0.0003)) if draft_vocab else None
    s = Scheduler(target, parallel=3, ctx_per_seq=128, draft=drafter, speculative=drafter is not None).start()
    try:
        reqs = [s.submit(p, sp) for p, sp in zip(prompts, params, strict=True)]
        return ["".join(e.text for e in r.stream()) for r in reqs], dict(s.stats), drafter
    finally:
        s.close()


@pytest.mark.parametrize("draft_vocab", [50, 47])
def test_a_draft_model_changes_steps_never_text(draft_vocab):
    """50: the draft model predicts as the target does (every draft accepted); 47: it mostly
    guesses wrong (drafts rejected, their cells dropped in both contexts). The fake executors
    check every KV position in the target's and the draft's context alike."""
    prompts = [[3, 1, 4, 1, 5], [2, 7, 1, 8, 2, 8], [1, 1, 2, 3, 5, 8, 13]]
    params = [GREEDY_LONG, GREEDY, GREEDY]  # the first runs alone at the end, where drafting pays most
    plain, plain_stats, _ = _run_draft(None, params, prompts)
    texts, stats, drafter = _run_draft(draft_vocab, params, prompts)
    assert texts == plain and stats["tokens_generated"] == plain_stats["tokens_generated"]
    assert stats["draft_tokens"] > 0 and drafter.executor.closed
    if draft_vocab == 50:
        # fewer steps; how many fewer depends on the measured (here: noise) cost of a draft step
        assert stats["draft_accepted"] == stats["draft_tokens"] and stats["steps"] < plain_stats["steps"]
    else:
        assert stats["draft_accepted"] < stats["draft_tokens"] * 0.5


def test_a_draft_model_server_with_a_small_context_starts_and_answers():
    """Before serving, a draft model's target times steps of up to 32 rows on one sequence: a --ctx
    smaller than that must shorten the measurement, not fail the engine at start-up."""
    target = FakeExecutor(n_seq=1, n_batch=48, ctx=16)
    from autoglm.engine.scheduler.draft_model import ModelDrafter

    s = Scheduler(target, parallel=1, ctx_per_seq=16, draft=ModelDrafter(FakeExecutor(n_seq=1, n_batch=48, ctx=16)))
    try:
        req = s.start().submit([3, 1, 4], GREEDY)
        events = list(req.stream(timeout=30))
        assert events[-1].error is None and s.failed is None
    finally:
        s.close()


def test_draft_models_must_share_the_vocabulary():
    from types import SimpleNamespace

    from autoglm.engine.errors import InvalidArgumentError
    from autoglm.engine.scheduler.draft_model import check_vocab

    def model(n: int, texts: dict[int, str] | None = None, eos: int = 2):
        return SimpleNamespace(n_vocab=n, eos=eos, token_text=lambda i: (texts or {}).get(i, f"t{i}"))

    check_vocab(model(100), model(100), "a", "b")
    with pytest.raises(InvalidArgumentError, match="vocabulary of 90 tokens"):
        check_vocab(model(100), model(90), "a", "b")
    with pytest.raises(InvalidArgumentError, match="token 7 differs"):
        check_vocab(model(100), model(100, {7: "x"}), "a", "b")
    with pytest.raises(InvalidArgumentError, match="end-of-text"):
        check_vocab(model(100), model(100, eos=3), "a", "b")


@pytest.mark.slow
def test_a_real_draft_model_keeps_the_text_and_drafts_are_accepted(backend, tmp_path):
    """The model's own Q4_0 re-quantization (llama.cpp's quantizer) drafts for the Q4_1 model:
    same vocabulary, mostly the same guesses. Temperature 0: text identical to plain decoding."""
    from autoglm.engine import loader
    from autoglm.engine.models.quantize import quantize_file
    from autoglm.engine.tasks.chat import PromptBuilder

    draft_file = tmp_path / "draft.Q4_0.gguf"
    quantize_file(Path(backend.plan.model_path), draft_file, "Q4_0")
    drafted = loader.load_scheduled(loader.prepare(None, pinned()), parallel=2, draft=str(draft_file))
    # drafts of up to 10 made to look free, so every step drafts (the most verifying); whether this draft
    # pays is the cost model's call, which here rightly says no (it costs as much as the target)
    drafted.scheduler.planner._with_drafting = lambda cost, rows: (lambda n: 1.0 if n <= rows + 10 else 1e9)
    builder = PromptBuilder(backend)
    try:
        backend.scheduler.speculative = False
        for prompt in PROMPTS[:6]:
            tokens = builder.tokens([{"role": "user", "content": prompt}])
            plain = "".join(e.text for e in backend.scheduler.submit(tokens, GREEDY).stream())
            mine = "".join(e.text for e in drafted.scheduler.submit(tokens, GREEDY).stream())
            assert mine == plain, prompt
        stats = drafted.scheduler.stats
        assert stats["draft_tokens"] > 20 and stats["draft_accepted"] > stats["draft_tokens"] * 0.3
    finally:
        backend.scheduler.speculative = True
        drafted.close()


def test_a_new_sequence_starts_from_what_recent_ones_accepted():
    """Where extra rows are dear, a fixed prior of two in three would never draft and so never
    learn; the shared record of recent sequences starts copy-heavy traffic drafting at once."""
    from autoglm.engine.scheduler.speculation import PRIOR_CAP, Acceptance

    shared = Acceptance()
    dear = lambda n: 1.0 if n == 1 else 2.2 + 0.35 * (n - 2)  # noqa: E731 - as measured here with Q4_1
    fresh = Drafter()
    fresh.reset(shared.prior())
    assert fresh.length(10, dear) == 0
    for _ in range(50):
        shared.observe(10, 10)
    learnt = Drafter()
    learnt.reset(shared.prior())
    assert learnt.p == pytest.approx(PRIOR_CAP) and learnt.length(10, dear) > 0
    for _ in range(3):
        learnt.observe(4, 0)  # misses: this sequence does not copy
    assert learnt.length(10, dear) == 0


@pytest.mark.slow
def test_the_0_5b_keeps_its_text_with_speculation_over_a_batch_of_long_prompts(qwen_05b, monkeypatch):
    """At real size (Qwen2.5-Coder-0.5B, Q4_K_M): four code edits of 40-80 line functions from Python's
    standard library, batched, at temperature 0: drafts (made to look free, so every lookup hit is
    verified at full length) change the steps, never the text."""
    import heapq
    import inspect
    import json as json_module
    import string
    import textwrap

    from autoglm.engine import loader
    from autoglm.engine.tasks.chat import PromptBuilder

    sources = [inspect.getsource(f) for f in (json_module.JSONEncoder.iterencode, heapq.nsmallest,
                                              textwrap.dedent, string.Formatter._vformat)]
    asks = [f"Add a comment line at the top of this function's body and return the whole function:\n\n{src}"
            for src in sources]
    model = loader.load_scheduled(loader.prepare("qwen2.5-coder-0.5b", pinned()), parallel=4, ctx_per_seq=2048)
    try:
        scheduler = model.scheduler
        builder = PromptBuilder(model)
        prompts = [builder.tokens([{"role": "user", "content": a}]) for a in asks]
        assert all(len(p) > 300 for p in prompts)
        params = SamplingParams(max_tokens=120, temperature=0)

        def together(speculative: bool) -> list[str]:
            scheduler.speculative = speculative
            with scheduler.lock:  # every run starts from empty streams: the same prompt pieces, the same slots
                scheduler.executor.clear()
                for slot in scheduler.planner.slots:
                    slot.cached = []
            reqs = [scheduler.submit(t, params) for t in prompts]
            return ["".join(e.text for e in r.stream()) for r in reqs]

        plain = together(False)
        monkeypatch.setattr(scheduler.planner, "row_cost", 0.0)
        monkeypatch.setattr(scheduler.planner, "_split_cost", lambda streams: 0.0)  # in company too
        before = scheduler.stats["draft_accepted"]
        drafted = together(True)
        assert drafted == plain
        assert scheduler.stats["draft_accepted"] - before > 100  # copying code: most of it drafted
    finally:
        model.close()


def test_a_copying_sequence_probes_even_after_free_text_drove_recent_acceptance_down():
    """Qwen2.5-Coder-1.5B on a 2-core EPYC after two free-form chats: recent acceptance was low, so a
    code edit started from a prior that judged every probe unaffordable, never drafted, and ran at
    plain speed while llama-server's n-gram types ran 1.4-2x. A probe is judged at PROBE_P at
    least; the backoff keeps failed ones rare."""
    from autoglm.engine.scheduler.speculation import Acceptance

    shared = Acceptance()
    for _ in range(200):
        shared.observe(2, 0)  # free text: drafts missed
    d = Drafter()
    d.reset(shared.prior())
    assert d.p < 0.4
    measured = _curve(QWEN_1_5B)
    code = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 5, 6, 7, 8]
    probe = d.draft(code, 20, measured)
    assert probe and probe == [9, 10, 11, 12][:len(probe)]  # what followed the last 4 tokens, at most PROBE_K


def _split_run(split: bool, copy_period: int | None) -> tuple[list[str], dict[str, int], int]:
    """Three streams, speculating, on one fake context or on two (SplitExecutor): the fakes check that
    every row continues its sequence's cells exactly, so a missed copy between the contexts fails."""
    from autoglm.engine.backends.split_executor import SplitExecutor

    def fake() -> FakeExecutor:
        return FakeExecutor(n_seq=3, n_batch=48, copy_period=copy_period)

    executor = SplitExecutor(fake(), fake(), min_rows=2) if split else fake()
    s = Scheduler(executor, parallel=3, ctx_per_seq=128, speculative=True).start()
    try:
        prompts = [[3, 1, 4, 1, 5] * 6, [2, 7, 1, 8, 2, 8], [1, 1, 2, 3, 5, 8, 13], [3, 1, 4, 1, 5] * 6]
        reqs = [s.submit(p, GREEDY_LONG) for p in prompts]  # four on three slots: one reuses a prefix
        texts = ["".join(e.text for e in r.stream()) for r in reqs]
        return texts, dict(s.stats), getattr(executor, "copies", 0)
    finally:
        s.close()


@pytest.mark.parametrize("copy_period", [5, None])
def test_prompt_rows_on_one_context_and_decode_rows_on_another_keep_the_text(copy_period):
    """Prompt chunks and verified drafts run on the plain weights' context, one-row steps on the
    repacked one: each sequence's cells follow it between them, and the text is what one context gives."""
    one, one_stats, _ = _split_run(False, copy_period)
    two, two_stats, copies = _split_run(True, copy_period)
    assert two == one and two_stats["tokens_generated"] == one_stats["tokens_generated"]
    assert copies >= 3  # every prompt's cells went to the decoding context at least once
    if copy_period == 5:
        assert two_stats["draft_accepted"] > 25


def _contexts_over_plain_weights(n_batch: int):
    """A maker of two-sequence contexts over one load of the embedded model's plain weights (so
    every context rounds alike), and the chat prompt builder for it."""
    from autoglm.engine import loader
    from autoglm.engine.backends.llama_executor import LlamaExecutor
    from autoglm.engine.backends.llamacpp import LlamaBackend
    from autoglm.engine.tasks.chat import PromptBuilder

    plan = loader.prepare(None, pinned()).plan
    backend = LlamaBackend(plan.model_path, threads=plan.threads, gpu_layers=0, use_extra_bufts=False,
                           use_mmap=True)

    def context() -> LlamaExecutor:
        return LlamaExecutor(backend.model, n_seq=2, ctx_per_seq=1024, n_batch=n_batch, threads=plan.threads)

    return context, PromptBuilder(backend)  # (the closure keeps the loaded weights alive)


@pytest.mark.slow
def test_two_real_contexts_hand_each_sequence_between_them_without_changing_text(default_model):
    """SplitExecutor over llama.cpp itself: two contexts over the same weights (so the same rounding),
    requests one at a time (so the same steps), speculating: prompt chunks and verified drafts on one,
    one-row steps on the other, each sequence's cells copied across at every switch. The text must be
    the one context's to the bit, with prefix reuse and rejected drafts' cells trimmed on the way."""
    from autoglm.engine.backends.split_executor import SplitExecutor

    context, builder = _contexts_over_plain_weights(n_batch=256)
    prompts = [builder.tokens([{"role": "user", "content": p}]) for p in PROMPTS]
    prompts.append(prompts[0])  # again: prefix reuse, and the reply recalled whole
    outputs, copies = {}, 0
    for split in (False, True):
        executor = SplitExecutor(context(), context(), min_rows=2) if split else context()
        scheduler = Scheduler(executor, parallel=2, ctx_per_seq=1024, speculative=True).start()
        try:
            outputs[split] = ["".join(e.text for e in scheduler.submit(p, GREEDY_LONG).stream()) for p in prompts]
            drafted = scheduler.stats["draft_accepted"]
        finally:
            scheduler.close()
        copies = getattr(executor, "copies", 0)
    assert outputs[True] == outputs[False]
    assert drafted > 50 and copies >= 2 * len(prompts)  # drafts verified, sequences moved both ways


@pytest.mark.slow
def test_a_plan_with_split_prompt_loads_both_layouts_and_answers(default_model):
    """The planner's choice reaching the loader: two loads of the file, a prompt longer than
    MIN_ROWS on the plain weights, its cells copied to the repacked context for decoding."""
    from autoglm.engine import loader
    from autoglm.engine.backends.llama_executor import LlamaExecutor
    from autoglm.engine.backends.split_executor import MIN_ROWS, SplitExecutor
    from autoglm.engine.tasks.chat import PromptBuilder

    prepared = loader.prepare(None, pinned())
    prepared.plan.split_prompt = True
    model = loader.load_scheduled(prepared, parallel=2, ctx_per_seq=1024)
    try:
        executor = model.scheduler.executor
        assert isinstance(executor, SplitExecutor) and executor.keep is not None
        tokens = PromptBuilder(model).tokens([{"role": "user", "content": PROMPTS[0]}])
        assert len(tokens) >= MIN_ROWS
        text = "".join(model.generate(tokens, GREEDY_LONG))
        assert text.strip() and executor.copies >= 1
    finally:
        model.close()
    # planned for fewer slots than the server runs: the loader checks RAM again for its --parallel
    prepared.device = dataclasses.replace(prepared.device, ram_available=200 * 2**20)
    model = loader.load_scheduled(prepared, parallel=2, ctx_per_seq=1024)
    try:
        assert isinstance(model.scheduler.executor, LlamaExecutor) and not prepared.plan.split_prompt
        assert prepared.plan.reasons["split_prompt"].startswith("off for 2 slots: two copies")
        assert "".join(model.generate(tokens, GREEDY_LONG)).strip()  # (other rounding: not always the same text)
    finally:
        model.close()


@pytest.mark.slow
def test_two_real_contexts_under_load_queue_hang_ups_and_long_prompts(default_model):
    """SplitExecutor at the limits a server reaches: five requests on two slots (so they queue and
    batch), one prompt longer than the batch (several chunks), one client that hangs up mid-reply,
    speculating. Every other reply ends properly, sequences move between the contexts, and then a
    sampled request alone and cold (exact) gives what one context gives it (same weights, same steps:
    same logits), so the contexts were left in a state that serves on correctly."""
    from autoglm.engine.backends.split_executor import SplitExecutor

    context, builder = _contexts_over_plain_weights(n_batch=128)
    prompts = [builder.tokens([{"role": "user", "content": p}]) for p in PROMPTS[:4]]
    prompts.append(builder.tokens([{"role": "user", "content": f"Summarize: {DOC} {DOC} {DOC}"}]))
    assert len(prompts[-1]) > 2 * 128  # three chunks at least
    sampled = SamplingParams(max_tokens=40, temperature=0.8, seed=7)
    alone = builder.tokens([{"role": "user", "content": "Name three rivers of Europe."}])
    split = SplitExecutor(context(), context(), min_rows=8)
    scheduler = Scheduler(split, parallel=2, ctx_per_seq=1024, speculative=True).start()
    try:
        reqs = [scheduler.submit(p, GREEDY_LONG) for p in prompts]
        hung_up = reqs[1]
        finals, texts = {}, {}
        for n, req in enumerate(reqs):
            parts = []
            for i, event in enumerate(req.stream(timeout=300)):
                parts.append(event.text)
                if req is hung_up and i == 5:
                    req.cancel()
                if event.done:
                    finals[n] = event
            texts[n] = "".join(parts)
        assert finals[1].finish_reason in ("cancelled", "stop", "length")
        for n in (0, 2, 3, 4):
            assert finals[n].error is None and finals[n].finish_reason in ("stop", "length")
            assert texts[n].strip()
        # what only the right cells can give: the copy, the invoice number, the long prompt's names
        assert DOC[:60] in texts[0] and "2024-117" in texts[2] and "Northwind" in texts[4]
        assert split.copies >= 2 * len(prompts)
        after = "".join(e.text for e in scheduler.submit(alone, sampled, exact=True).stream(timeout=300))
    finally:
        scheduler.close()
    single = Scheduler(context(), parallel=2, ctx_per_seq=1024, speculative=True).start()
    try:
        assert "".join(e.text for e in single.submit(alone, sampled, exact=True).stream(timeout=300)) == after
    finally:
        single.close()
