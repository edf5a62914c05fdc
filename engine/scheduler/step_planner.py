"""The scheduler's step planner: pure bookkeeping, no llama.cpp, so its invariants are tested
with random arrival / cancel / finish sequences and a fake executor.

Slot states (one slot per llama.cpp sequence id)::

    IDLE --admit--> PREFILL --last prompt chunk sampled--> DECODE --release--> IDLE
      ^                |                                                         |
      +----release-----+  (cancel, disconnect, failure)          cells kept for prefix reuse

Each step is one batch: first one token per DECODE slot, then (when no prompt is prefilling) the
drafts of speculating slots to verify, then prompt chunks of PREFILL slots in admission order,
within ``n_batch`` rows. That budget is an invariant enforced here (llama.cpp
aborts the whole process when a batch exceeds it). The prompt chunk adapts to a step-latency
target (AIMD), so running streams keep getting tokens while long prompts prefill.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from autoglm.engine.errors import ContextOverflowError, InvalidArgumentError, QueueFullError
from autoglm.engine.scheduler.speculation import (
    PRIOR_ROW_COST,
    Acceptance,
    Cost,
    Drafter,
    NgramMemory,
    step_time,
)

STEP_TARGET_S = 0.10  # a running stream should get a token at least this often while prompts prefill...
PREFILL_SLOWDOWN = 2.0  # ...or at worst at this multiple of its interval without prompts (many streams)
MIN_CHUNK = 32


class SlotState(Enum):
    IDLE = "idle"  # no request; its KV cells still hold ``cached`` for the next prompt that shares it
    PREFILL = "prefill"  # prompt tokens left to evaluate
    DECODE = "decode"  # generating one token per step


@dataclass
class Job:
    """What the planner knows of a request: its tokens and budget; ``owner`` is the caller's handle."""

    prompt: list[int]
    max_tokens: int
    owner: Any = None
    speculate: bool = False  # greedy and unconstrained: drafts from its own context are verified
    greedy: bool = False  # temperature 0: may draft from other requests' replies (see Scheduler.submit), and its
    # opening is decided by one-row steps (OPENING)
    exact: bool = False  # batch-invariant: runs alone, its prompt cold in whole-batch chunks (see _admit)
    waited: int = 0  # steps an exact job has held the queue's head (EXACT_PATIENCE)


@dataclass
class Slot:
    seq: int
    state: SlotState = SlotState.IDLE
    job: Job | None = None
    cached: list[int] = field(default_factory=list)  # tokens with KV cells (+ one sampled, if fresh)
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    produced: int = 0
    max_tokens: int = 0
    fresh: bool = False  # cached[-1] was sampled but not yet evaluated: it has no KV cell
    row: int = -1  # this step's batch row holding our logits, -1 if none
    order: int = 0  # admission number: prompt chunks go to the earliest admitted first
    reused: int = 0  # prompt tokens whose cells were already there at admission
    drafter: Drafter = field(default_factory=Drafter)
    draft: list[int] = field(default_factory=list)  # this step's drafted tokens, after ``row``
    draft_rows: list[int] = field(default_factory=list)  # their batch rows (each with logits)
    reply_from: int = -1  # where the last greedy speculating reply in ``cached`` starts (-1: none, or another kind)
    fragile: list[int] = field(default_factory=list)  # positions of that reply's near-tied tokens (FRAGILE)

    @property
    def current(self) -> Job:
        """The job of a busy slot (PREFILL or DECODE); asking an idle slot is a bug."""
        if self.job is None:
            raise RuntimeError(f"slot {self.seq} is idle")
        return self.job


@dataclass(frozen=True)
class Row:
    token: int
    pos: int
    seq: int
    logits: bool


@dataclass
class Step:
    trims: list[tuple[int, int]]  # (seq, keep): drop this sequence's KV cells from position keep on
    rows: list[Row]
    sample: list[Slot]  # slots whose ``row`` has logits to sample this step
    pads: list[tuple[int, int]] = field(default_factory=list)  # (seq, keep): padding rows' cells, dropped after
    single: bool = True  # llama.cpp runs the rows as one graph (not split): its time is a point of the step curve
    asks: list[tuple[Slot, int]] = field(default_factory=list)  # (slot, k): k tokens wanted from the draft model

    @property
    def draft_asks(self) -> list[tuple[int, list[int], int]]:
        """What the draft model is asked, as data: (sequence, its tokens, how many to draft)."""
        return [(slot.seq, slot.cached, k) for slot, k in self.asks]


# A greedy reply's first tokens are decided by one-row steps, as plain decoding decides them. A step's row count
# changes llama.cpp's kernels and so its rounding, and where a reply opens a near-tie decides its course: on the
# 1.5B, "def" led "#" by 0.04 three tokens into a code edit, and inside a many-row step the reply wrote a comment
# line plain decoding did not. Drafting them costs little to skip: a step of 9 rows takes about what 9 one-row
# steps take on a 1.5B on a CPU. (Before: drafted steps were checked for near-ties and discarded on one, which on
# code edits was most of them: a 63-row step thrown away per request, about a second.)
OPENING = 8

# A greedy token that led the runner-up by less than this (logits) may fall the other way when asked again: a
# regenerated reply starts from a prompt whose last token is evaluated in another step than the first time, and
# llama.cpp rounds a row differently with the rows around it. Measured on the 1.5B, plain decoding, the same prompt
# cold then from the cache: a story went another way at its 14th token (its lead 0.024 the first time, 0.070 the
# second), a code edit at its 4th (0.058 -> 0.091); leads of 0.10 and more held in all 4 replies, and an
# explanation with 12 leads under 0.3 came out the same. The earlier reply is drafted up to such a token and not
# past it (see Drafter.expect), so each one costs a step: at 0.25 a repeated code edit's copy stopped at 3-5 tokens
# that held (18 steps instead of 12), at 0.1 at 1-2.
FRAGILE = 0.1

# Steps an exact job holds back the queue while running streams finish (2-3 s for a 1.5B on a CPU); then it
# runs batched like any other. Without a bound, a classify-by-prompt request behind one long chat stream
# waited for that whole reply, and every request behind it too.
EXACT_PATIENCE = 64


class StepPlanner:
    def __init__(self, n_slots: int, n_batch: int, ctx_per_seq: int, max_queue: int = 64,
                 min_chunk: int = MIN_CHUNK, step_target_s: float = STEP_TARGET_S, draft_model: bool = False) -> None:
        if not 1 <= n_slots <= 256:
            raise InvalidArgumentError(f"parallel must be between 1 and 256, got {n_slots}")
        if n_batch < n_slots + min_chunk:
            raise InvalidArgumentError(f"a batch of {n_batch} cannot hold {n_slots} streams and a prompt chunk")
        self.n_batch, self.ctx_per_seq, self.max_queue = n_batch, ctx_per_seq, max_queue
        self.min_chunk, self.max_chunk, self.step_target_s = min_chunk, n_batch, step_target_s
        self.chunk = n_batch
        self.slots = [Slot(i) for i in range(n_slots)]
        self.waiting: deque[Job] = deque()
        self._order = itertools.count()
        self.prompt_tokens = self.prompt_reused = 0
        self._streams_running = False  # did the last step decode running streams (for the chunk AIMD)
        self._prompt_rows = 0  # prompt rows in the last step
        self.decode_step_s: float | None = None  # recent time of a step with streams and no prompt rows
        self.row_cost: Cost = PRIOR_ROW_COST  # a step's time by rows: the scheduler sets its measured curve
        # A draft model (``--draft``): a step's ``asks`` go to it at once, its drafts come back to
        # ``complete``; each drafted token also costs one draft step, ``draft_cost`` (seconds, measured).
        self.draft_model = draft_model
        self.draft_cost: float | None = None
        self.acceptance = Acceptance()  # across sequences: where a new one's estimate starts
        self.memory = NgramMemory()  # recent replies, for drafting what a later request writes again

    # --- queue ----------------------------------------------------------------------------
    def check(self, prompt: list[int]) -> None:
        if not prompt:
            raise InvalidArgumentError("the prompt is empty")
        if len(prompt) >= self.ctx_per_seq:
            raise ContextOverflowError(f"the prompt is {len(prompt)} tokens but a sequence holds {self.ctx_per_seq}; "
                                       "use --ctx to enlarge it or shorten the prompt")

    def enqueue(self, job: Job) -> None:
        self.check(job.prompt)
        if len(self.waiting) >= self.max_queue:
            raise QueueFullError(f"{len(self.waiting)} requests are already waiting")
        self.waiting.append(job)

    def drop_waiting(self, job: Job) -> None:
        self.waiting.remove(job)

    @property
    def active(self) -> list[Slot]:
        return [s for s in self.slots if s.state is not SlotState.IDLE]

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(s.state is not SlotState.IDLE for s in self.slots)

    # --- one step -------------------------------------------------------------------------
    def _admit(self) -> list[tuple[int, int]]:
        """Waiting jobs into free slots, first come first served, each to the free slot sharing the
        longest prefix with it; returns the KV trims that admission implies.

        An ``exact`` job waits for the batch to empty (at most EXACT_PATIENCE steps, then it runs
        batched) and then runs alone, its prompt evaluated from scratch: llama.cpp rounds a row
        differently with the step around it (its kernels change with the rows in a step, flash
        attention turns tiled at 64 rows, a reused prefix was evaluated in other chunks), and a label
        whose two scores nearly tie then falls either way between two runs of the same text. Alone
        and cold, the same text gets the same rows every time."""
        trims = []
        while self.waiting:
            busy = [s for s in self.slots if s.state is not SlotState.IDLE]
            head = self.waiting[0]
            if busy and head.exact and head.waited < EXACT_PATIENCE:
                head.waited += 1
                break  # first come first served: nothing overtakes a waiting exact job
            if busy and head.exact:
                head.exact = False  # waited long enough: batched, as before exact existed
            if busy and any(s.current.exact for s in busy):
                break
            free = [s for s in self.slots if s.state is SlotState.IDLE]
            if not free:
                break
            job = self.waiting.popleft()
            slot = max(free, key=lambda s: _common(s.cached, job.prompt))
            common, n = _common(slot.cached, job.prompt), len(job.prompt)
            again = job.greedy and slot.reply_from == n and common == n  # the same prompt: its reply is still there
            before = slot.cached[n:] if again else []
            fragile = [p - n for p in slot.fragile if p >= n] if again else []
            keep = 0 if job.exact else min(common, len(job.prompt) - 1)  # >= 1 evaluated
            trims.append((slot.seq, keep))
            slot.state, slot.job, slot.order = SlotState.PREFILL, job, next(self._order)
            slot.cached, slot.pending = slot.cached[:keep], job.prompt[keep:]
            slot.produced, slot.fresh, slot.reused = 0, False, keep
            slot.drafter.reset(self.acceptance.prior())
            slot.drafter.expect(before, n, fragile)
            slot.reply_from, slot.fragile = (n if job.greedy and job.speculate else -1), []  # (margins kept)
            slot.max_tokens = min(job.max_tokens, self.ctx_per_seq - len(job.prompt))
            self.prompt_tokens += len(job.prompt)
            self.prompt_reused += keep
            if job.exact:
                break
        return trims

    def plan(self) -> Step:
        """The whole step when no draft model is asked (tests, and the scheduler without ``--draft``)."""
        return self.complete(self.begin(), {})

    def begin(self) -> Step:
        """Admission, one row per running stream, and self-drafted tokens. With a draft model the
        step's ``asks`` say what it must draft; its answer comes back as data, to ``complete``."""
        step = Step(self._admit(), [], [])
        for slot in self.slots:  # running streams first: one token each
            slot.row, slot.draft, slot.draft_rows = -1, [], []
            if slot.state is SlotState.DECODE:
                slot.row, slot.fresh = len(step.rows), False
                step.rows.append(Row(slot.cached[-1], len(slot.cached) - 1, slot.seq, True))
                step.sample.append(slot)
        self._streams_running = bool(step.rows)
        self._prompt_rows = 0
        self._drafts(step)
        return step

    def complete(self, step: Step, drafts: dict[int, list[int]]) -> Step:
        """The draft model's tokens (by sequence; fewer than asked is fine), then prompt chunks."""
        for slot, k in step.asks:
            slot.draft = drafts.get(slot.seq, [])[:k]
            self._add_draft(step.rows, slot)
        self._prompt_chunks(step)
        decoding = [s.seq for s in step.sample if s.state is SlotState.DECODE]
        if len(step.rows) == len(step.sample) == len(decoding) > 1:  # one token per running stream, nothing else
            step.rows, step.pads = self._padded(step.rows)
        assert len(step.rows) <= self.n_batch, "the step planner broke its batch budget"
        seqs = sorted({row.seq for row in step.rows})
        step.single = len(seqs) <= 1 or (len(step.rows) == len(seqs) and seqs[-1] - seqs[0] == len(seqs) - 1)
        return step

    def _drafts(self, step: Step) -> None:
        """Drafts to verify, within what prompt chunks can spare: prompts come first (prefill is
        the batch's best work), so no slot drafts while one is prefilling."""
        prefilling = any(s.state is SlotState.PREFILL for s in self.slots)  # (waiting ones have no slot yet)
        spare = 0 if prefilling else self.n_batch - len(step.rows)
        cost = self._split_cost(len(step.sample))
        for slot in step.sample:
            if not slot.current.speculate or spare <= 0 or (slot.current.greedy and slot.produced <= OPENING):
                continue
            pos = len(slot.cached) - 1
            limit = min(spare, slot.max_tokens - slot.produced - 1, self.ctx_per_seq - pos - 2)
            if not self.draft_model:
                slot.draft = slot.drafter.draft(slot.cached, limit, cost, len(step.rows),
                                                self.memory if slot.current.greedy else None)
                self._add_draft(step.rows, slot)
                spare -= len(slot.draft)
                continue
            used = len(step.rows) + sum(k for _, k in step.asks)  # one draft-model call drafts for all
            if (k := slot.drafter.length(limit, self._with_drafting(cost, used), used)) > 0:
                step.asks.append((slot, k))
                spare -= k

    def _prompt_chunks(self, step: Step) -> None:
        """Prompt chunks in admission order. The AIMD chunk protects running streams; with none, a
        prompt takes the whole batch (a chunk left small by the previous request's streams split a
        lone prompt into 32-row steps, and llama.cpp's kernels round a prompt differently when it is
        split differently)."""
        budget = min(self.chunk if self._streams_running else self.max_chunk, self.n_batch - len(step.rows))
        for slot in sorted((s for s in self.slots if s.state is SlotState.PREFILL), key=lambda s: s.order):
            if budget <= 0:
                break
            take = slot.pending[:budget]
            last = len(take) == len(slot.pending)
            for j, tok in enumerate(take):
                step.rows.append(Row(tok, len(slot.cached), slot.seq, last and j == len(take) - 1))
                slot.cached.append(tok)
            slot.pending = slot.pending[len(take):]
            budget -= len(take)
            self._prompt_rows += len(take)
            if last:
                slot.row = len(step.rows) - 1
                step.sample.append(slot)

    def _padded(self, rows: list[Row]) -> tuple[list[Row], list[tuple[int, int]]]:
        """With a KV stream per sequence, llama.cpp splits a batch into one graph per run of
        consecutive sequence ids: streams 0-2 and 4-7 decode as two graphs, measured 21% slower
        than all eight in one. A row for each idle sequence in a gap (its cell dropped after the
        step) joins the runs; which runs to join is chosen over the whole batch from the measured
        step curve (four streams two apart run faster split; 256 slots, every other one idle, run
        faster as one graph), in at most a few milliseconds for 256 slots."""
        running = [row.seq for row in rows]
        runs = [[running[0], running[0]]]
        for seq in running[1:]:
            if seq == runs[-1][1] + 1:
                runs[-1][1] = seq
            else:
                runs.append([seq, seq])
        if len(runs) == 1:
            return rows, []

        times: dict[int, float] = {}

        def t(n: int) -> float:  # a graph of n rows (asked often: kept for this step)
            if n not in times:
                times[n] = step_time(self.row_cost, n)
            return times[n]

        # a gap whose idle streams all have a cell to lend (a full stream has none) can be filled
        fillable = [all(len(self.slots[q].cached) < self.ctx_per_seq for q in range(a[1] + 1, b[0]))
                    for a, b in zip(runs, runs[1:], strict=False)]
        # cheapest way to cover runs 0..j (dynamic programming: joining is worth it only over a distance
        # sometimes, as one graph of 256 rows against 128 single rows)
        best: list[tuple[float, int]] = []  # (time, index of the first run joined into run j's graph)
        for j in range(len(runs)):
            options = []
            for i in range(j, -1, -1):
                if i < j and not fillable[i]:
                    break
                options.append(((best[i - 1][0] if i else 0.0) + t(runs[j][1] - runs[i][0] + 1), i))
            best.append(min(options))
        joined, j = [], len(runs) - 1
        while j >= 0:
            i = best[j][1]
            joined.append([runs[i][0], runs[j][1]])
            j = i - 1
        runs = joined[::-1]
        by_seq = {row.seq: row for row in rows}
        out: list[Row] = []
        pads: list[tuple[int, int]] = []
        for lo, hi in runs:
            for seq in range(lo, hi + 1):
                if seq in by_seq:
                    self.slots[seq].row = len(out)
                    out.append(by_seq[seq])
                else:  # an idle stream: a throwaway token after its cells, without logits
                    keep = len(self.slots[seq].cached)
                    out.append(Row(by_seq[lo].token, keep, seq, False))
                    pads.append((seq, keep))
        return out, pads

    def _split_cost(self, streams: int) -> Cost:
        """A step's time by rows when ``streams`` sequences each have one. With a KV stream per
        sequence llama.cpp runs a batch as graphs of equal tokens per sequence, so the drafts of a
        step shared with other streams are a second graph (measured: 7 rows over 4 streams, 3 of
        them drafts, take 20% longer than 7 streams' rows): drafting alone is cheaper than in company."""
        if streams <= 1:
            return self.row_cost
        base = step_time(self.row_cost, streams)
        return lambda n: base + (step_time(self.row_cost, n - streams) if n > streams else 0.0)

    def _with_drafting(self, cost: Cost, rows: int) -> Callable[[int], float]:
        """The step's time with n rows when the drafts beyond ``rows`` each take a draft-model step
        first (unmeasured: the prior's share of a one-row step)."""
        per_draft = self.draft_cost if self.draft_cost is not None else PRIOR_ROW_COST * step_time(self.row_cost, 1)
        return lambda n: step_time(cost, n) + per_draft * max(n - rows, 0)

    @staticmethod
    def _add_draft(rows: list[Row], slot: Slot) -> None:
        pos = len(slot.cached) - 1
        for i, tok in enumerate(slot.draft):
            slot.draft_rows.append(len(rows))
            rows.append(Row(tok, pos + 1 + i, slot.seq, True))

    def observe(self, elapsed_s: float) -> None:
        """Adapt the prompt chunk to the step-latency target while streams are running (AIMD). The
        target is STEP_TARGET_S, or PREFILL_SLOWDOWN times a step without prompt rows when the streams
        alone take longer than that (64 streams on 2 cores): a fixed 0.1 s then held the chunk at its
        minimum, and 128 queued prompts took minutes to prefill 32 rows at a time."""
        if not self._streams_running:
            self.chunk = self.max_chunk
            return
        if not self._prompt_rows:
            self.decode_step_s = elapsed_s if self.decode_step_s is None else 0.7 * self.decode_step_s + 0.3 * elapsed_s
            return
        target = max(self.step_target_s, PREFILL_SLOWDOWN * (self.decode_step_s or 0.0))
        if elapsed_s > target:
            self.chunk = max(self.min_chunk, self.chunk // 2)
        else:
            self.chunk = min(self.max_chunk, self.chunk + self.min_chunk)

    def accept(self, slot: Slot, token: int, evaluated: bool = False, margin: float | None = None) -> None:
        """The token sampled for ``slot``: it becomes the slot's next input (no KV cell yet), or,
        for an accepted draft (``evaluated``), a token whose cell the verifying step wrote.
        ``margin``: a greedy token's lead over the runner-up, kept where it nearly tied."""
        if margin is not None and margin < FRAGILE:
            slot.fragile.append(len(slot.cached))
        slot.state = SlotState.DECODE
        slot.produced += 1
        slot.cached.append(token)
        slot.fresh = not evaluated

    def verified(self, slot: Slot, predicted: list[int]) -> tuple[list[int], int]:
        """After a step with a draft: ``predicted`` is the greedy token after the slot's input and
        after each drafted token. Returns the tokens to emit (the accepted drafts and the model's
        own next one) and the position from which this sequence's KV cells must be dropped (the
        rejected drafts')."""
        accepted = 0
        while accepted < len(slot.draft) and predicted[accepted] == slot.draft[accepted]:
            accepted += 1
        slot.drafter.observe(len(slot.draft), accepted)
        if not slot.drafter.copied:  # (an earlier reply's copy says nothing of how new text copies)
            self.acceptance.observe(len(slot.draft), accepted)
        if slot.drafter.recalled:
            self.memory.observe(len(slot.draft), accepted)
        keep = len(slot.cached) + accepted  # the input (now with a cell) and the accepted drafts
        return slot.draft[:accepted] + [predicted[accepted]], keep

    def release(self, slot: Slot) -> Job | None:
        """The slot's request ended (finished, cancelled, failed); its evaluated cells stay for reuse."""
        job = slot.job
        if job is not None and slot.produced:  # the reply, after enough of the prompt to recall it by
            start = max(len(slot.cached) - slot.produced - self.memory.n, 0)
            self.memory.add(slot.cached[start:], {p - start for p in slot.fragile if p >= start})
        if slot.fresh:
            slot.cached.pop()
        slot.state, slot.job, slot.pending, slot.fresh, slot.row = SlotState.IDLE, None, [], False, -1
        return job

    def forget(self) -> list[Job]:
        """After a failed step the KV state is unknown: every slot empties, and the jobs that were
        running or waiting are returned so their callers can be told."""
        jobs = [s.job for s in self.slots if s.job is not None] + list(self.waiting)
        for slot in self.slots:
            self.release(slot)
            slot.cached = []
        self.waiting.clear()
        return jobs


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
