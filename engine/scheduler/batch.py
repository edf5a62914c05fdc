"""Continuous batching: one thread owns the executor (one llama.cpp context) and, every step,
asks the step planner for a batch (the next token of every running sequence plus prompt chunks),
decodes it in one call, samples, and turns tokens into text events for each request.

Fault containment: an exception in a step fails every running and queued request at once with
the reason, marks the scheduler failed (``/health`` answers 503 with it) and calls ``on_fatal``;
the server then exits non-zero for its supervisor (the desktop app restarts its engine child).
A fresh context in-process was the alternative, but after a native failure the process' state
is unknown, and a clean restart is what llama-server's supervisors do too.
"""

from __future__ import annotations

import codecs
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from autoglm.engine.errors import (
    AutoGLMError,
    DamagedModelError,
    QueueFullError,
    RequestTooCostlyError,
    SchedulerFailedError,
)
from autoglm.engine.sampling import GenerationStats, SamplingParams, stop_split
from autoglm.engine.scheduler import rejection
from autoglm.engine.scheduler.cpu_load import ThreadSwitch
from autoglm.engine.scheduler.draft_model import ModelDrafter, one_row_step
from autoglm.engine.scheduler.speculation import StepCost
from autoglm.engine.scheduler.step_planner import Job, Slot, Step, StepPlanner

log = logging.getLogger(__name__)

GRAMMAR_TOKEN_S = 0.05  # what one request's grammar may cost the scheduler thread per token, on average
GRAMMAR_GRACE_S = 0.5  # on top, once: the first token's grammar work is the largest


@dataclass
class Event:
    text: str = ""
    done: bool = False
    finish_reason: str | None = None
    error: AutoGLMError | None = None  # typed: each front end maps the kind once (HTTP status, exit code)
    stop: str | None = None  # the stop string that ended the reply (tool calling stops at one of its own)
    cached_tokens: int = 0  # on the last event: prompt tokens taken from the KV cache, not decoded again


@dataclass
class Generation:
    """One request's life in the scheduler: its prompt and settings, the events its caller reads,
    and the state the scheduler thread keeps while it holds a slot. (Named apart from the HTTP
    request a server route receives.)"""

    prompt: list[int]
    params: SamplingParams
    grammar: str | None = None
    events: queue.Queue[Event] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stats: GenerationStats = field(default_factory=GenerationStats)
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    sink: Callable[[Event], None] | None = None  # set by async callers; called from the scheduler thread
    streamed: bool = True  # False: the text comes in the final event alone (no wake-up of the caller per token)
    held: list[str] = field(default_factory=list)  # text not yet handed over (not streamed)
    # scheduler-thread state while the request holds a slot
    sampler: Any = None
    decoder: Any = None
    text: str = ""
    stop_hit: str | None = None
    grammar_s: float = 0.0  # time its grammar has cost the scheduler thread so far
    rng: np.random.Generator | None = None  # draws for verified drafts of a sampled stream (seeded by its seed)

    def put(self, event: Event) -> None:
        """Hand an event to the caller. Each hand-over wakes its thread, which then competes with
        llama.cpp's threads for the cores (2-3% of decode speed measured on 2 cores): a caller
        that wants only the whole text gets it in the final event."""
        if not self.streamed:
            if not event.done:
                self.held.append(event.text)
                return
            event = replace(event, text="".join(self.held) + event.text)
            self.held = []
        (self.sink or self.events.put)(event)

    def cancel(self) -> None:
        self.cancelled.set()

    def stream(self, timeout: float | None = None) -> Iterator[Event]:
        """Blocking iterator of events until the final one (for threads; the server uses ``sink``)."""
        while True:
            event = self.events.get(timeout=timeout)
            yield event
            if event.done:
                return


class Scheduler:
    def __init__(self, executor: Any, parallel: int = 4, ctx_per_seq: int = 2048, max_queue: int = 64,
                 on_fatal: Callable[[str], None] | None = None, speculative: bool = True,
                 draft: ModelDrafter | None = None) -> None:
        self.executor, self.speculative, self.draft = executor, speculative, draft
        self.step_cost = StepCost()
        self.parallel, self.ctx_per_seq, self.max_queue = parallel, ctx_per_seq, max_queue
        self.planner = StepPlanner(parallel, executor.n_batch, ctx_per_seq, max_queue, draft_model=draft is not None)
        self.planner.row_cost = self.step_cost  # the measured curve of step time by rows
        self.on_fatal = on_fatal
        self.thread_switch: ThreadSwitch | None = None  # set by adapt_threads
        self.lock = threading.Condition()
        self.stopping = False
        self.failed: str | None = None  # the reason, once a step failed
        self.freed = False
        self.stats = {"steps": 0, "tokens_generated": 0, "prompt_tokens": 0, "prompt_reused": 0,
                      "draft_tokens": 0, "draft_accepted": 0, "padding_rows": 0, "peak_active": 0}
        self.thread = threading.Thread(target=self._run, name="autoglm-scheduler", daemon=True)

    def start(self) -> Scheduler:
        """Start the loop once everything it reads is set (``adapt_threads``, the fault callback):
        from here on only the loop thread changes slots and calls llama.cpp."""
        if self.thread.ident is None:
            self.thread.start()
        return self

    # --- public -------------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams, grammar: str | None = None,
               sink: Callable[[Event], None] | None = None, streamed: bool = True, exact: bool = False) -> Generation:
        """``exact``: the same prompt gets the same logits whatever else runs (alone, from scratch:
        StepPlanner._admit), at the cost of batching; for answers that are compared across runs."""
        if self.thread.ident is None:
            raise RuntimeError("Scheduler.start() was not called: nothing would run this request")
        params.validate()
        self.planner.check(prompt)
        # Built here, in the caller's thread: a bad grammar fails its own request, and compiling a large
        # one never stalls the scheduler thread (and with it every running stream).
        req = Generation(prompt, params, grammar, sink=sink, streamed=streamed,
                      sampler=self.executor.sampler(params, grammar))
        with self.lock:
            refusal = (f"the engine failed and must be restarted: {self.failed}" if self.failed else
                       "the engine is shutting down" if self.stopping else None)
            try:
                if refusal:
                    raise SchedulerFailedError(refusal)
                # drafts are verified by argmax (temperature 0) or by the rejection rule; a grammar's
                # state cannot be rolled back past a rejected draft, so constrained streams do not draft
                # recalled drafts (other requests' replies) only for greedy streams: a sampled one
                # would draw its random numbers differently, and its seed must give the same text
                self.planner.enqueue(Job(prompt, params.max_tokens, req,
                                         speculate=self.speculative and grammar is None and not exact,
                                         greedy=params.temperature == 0, exact=exact))
            except Exception:
                self.executor.free_sampler(req.sampler)
                raise
            self.lock.notify()
        return req

    def adapt_threads(self, idle: tuple[int, int], busy: tuple[int, int] | None = None) -> None:
        """Decode on fewer threads than ``idle`` while other processes keep cores busy (no more than
        ``busy``'s, where `autoglm tune` measured them); checked between steps (see ``load``)."""
        self.thread_switch = ThreadSwitch(idle, busy)

    @property
    def queue_depth(self) -> int:
        return len(self.planner.waiting)

    @property
    def active(self) -> int:
        return len(self.planner.active)

    def close(self, timeout: float = 10) -> None:
        """Stop the loop. The loop thread frees the context itself as it ends (llama.cpp's worker
        team belongs to the thread that decodes; freeing it from another one while the interpreter
        shut down segfaulted on Ctrl-C). A thread stuck in a native call keeps it: leaking it beats
        freeing memory that is in use."""
        with self.lock:
            self.stopping = True
            self.lock.notify()
        if self.thread.ident is None:  # never started: nothing runs, the context is ours to free
            self._free()
            return
        self.thread.join(timeout=timeout)
        if self.thread.is_alive():
            log.error("the scheduler thread did not stop in %.0fs; its llama.cpp context is left allocated", timeout)
            return
        self._free()  # a loop that ended by failing left it

    def _free(self) -> None:
        with self.lock:
            if self.freed:
                return
            self.freed = True
        self.executor.close()
        if self.draft is not None:
            self.draft.executor.close()

    # --- the scheduler thread -----------------------------------------------------------------
    def _calibrate(self) -> None:
        """With a draft model, both one-row steps are timed before serving, in the same unit: the
        target's alone, with warm caches, is what drafting must beat (steps right after a draft
        step run colder). On this thread: llama.cpp's OpenMP workers belong to the thread that
        calls it, and a second team (the caller's) measured slower steps for both."""
        if self.draft is None:
            return
        self.step_cost.observe(1, one_row_step(self.executor))
        # and the curve, where a draft model's drafts are verified: found by trying, each longer draft
        # costs that many draft-model steps first (a 0.5B drafting for a 1.5B lost 27% exploring it)
        for rows in (2, 4, 8, 16, 32):
            if rows <= min(self.executor.n_batch, self.ctx_per_seq - 1):  # a small --ctx holds fewer cells
                self.step_cost.observe(rows, one_row_step(self.executor, runs=1, rows=rows))
        if self.draft.step_s is None:
            self.draft.calibrate()
        self.planner.draft_cost = self.draft.step_s

    def _run(self) -> None:
        try:
            self._calibrate()
            while self._wait():
                self._step()
        except BaseException as exc:  # noqa: BLE001 - whatever broke, every caller must hear of it
            self._fail(f"{type(exc).__name__}: {exc}" if not isinstance(exc, AutoGLMError) else str(exc))
        finally:
            with self.lock:  # requests that arrived while stopping are told, not left waiting
                jobs = self.planner.forget() if self.stopping and not self.failed else []
            for job in jobs:
                self._end(job.owner, "cancelled")
            if self.stopping:
                self._free()

    def _wait(self) -> bool:
        with self.lock:
            while not self.stopping and not self.planner.busy:
                self.lock.wait()
            return not self.stopping

    def _fail(self, reason: str) -> None:
        log.error("scheduler step failed: %s", reason)
        with self.lock:
            self.failed = reason
            jobs = self.planner.forget()
        for job in jobs:
            self._end(job.owner, "error", SchedulerFailedError(f"the engine failed: {reason}"))
        try:
            self.executor.clear()
            if self.draft is not None:
                self.draft.clear()
        except Exception:  # noqa: BLE001 - best effort; the process is about to be restarted
            pass
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def _step(self) -> None:
        """One step as plan -> execute -> update (vLLM's schedule, execute, update_from_output):
        the planner owns slot bookkeeping, the draft model answers the plan's asks as data, and
        only ``_update`` turns sampled tokens into state changes and events."""
        with self.lock:
            self._sweep_cancelled()
            step = self.planner.begin()
        drafts = self.draft.propose(step.draft_asks) if self.draft is not None and step.asks else {}
        self.planner.complete(step, drafts)
        self._prepare(step)
        if not step.rows:
            return
        elapsed = self._execute(step)
        self._observe(step, elapsed)
        self._update(step, self._sample(step))

    def _sweep_cancelled(self) -> None:
        for job in [j for j in self.planner.waiting if j.owner.cancelled.is_set()]:
            self.planner.drop_waiting(job)
            self._end(job.owner, "cancelled")
        for slot in self.planner.active:
            if slot.current.owner.cancelled.is_set():
                self._finish(slot, "cancelled")

    def _prepare(self, step: Step) -> None:
        """KV trims the plan implies, and the text decoder of each request admitted this step."""
        for seq, keep in step.trims:
            self.executor.trim(seq, keep)
        for slot in self.planner.active:
            job = slot.current
            req: Generation = job.owner
            if req.decoder is None:  # admitted this step
                req.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                req.stats.prompt_tokens = len(job.prompt)
                req.stats.prompt_evaluated = len(job.prompt) - slot.reused

    def _execute(self, step: Step) -> float:
        """Decode the step's rows in one call; returns its time."""
        if self.thread_switch is not None and (threads := self.thread_switch.check()) is not None:
            self.executor.set_threads(*threads)
            self.stats["thread_switches"] = self.thread_switch.switches
        self.stats["peak_active"] = max(self.stats["peak_active"], len(self.planner.active))
        started = time.perf_counter()
        self.executor.decode(step.rows)
        elapsed = time.perf_counter() - started
        for seq, keep in step.pads:
            self.executor.trim(seq, keep)
        self.stats["padding_rows"] += len(step.pads)
        return elapsed

    def _observe(self, step: Step, elapsed: float) -> None:
        """The step's time feeds the prompt chunk's AIMD and, for a pure decode step run as one
        graph with warm caches, the measured step curve that drafting decisions read."""
        self.planner.observe(elapsed)
        drafted = sum(len(s.draft) for s in step.sample)
        cold = not drafted and bool(step.asks)  # the draft model ran (its caches displaced ours) but drafted nothing
        decode_only = len(step.rows) == len(step.sample) + drafted + len(step.pads)  # no prompt chunk
        if decode_only and step.single and not cold:
            self.step_cost.observe(len(step.rows), elapsed, drafted)
        if self.draft is not None and self.step_cost.times and self.draft.step_s is not None:
            self.planner.draft_cost = self.draft.step_s  # one draft step, in the step curve's unit (seconds)
        self.stats["steps"] += 1
        self.stats["prompt_tokens"] = self.planner.prompt_tokens
        self.stats["prompt_reused"] = self.planner.prompt_reused

    def _sample(self, step: Step) -> dict[int, list[int]]:
        """Tokens per slot (by id) for every unconstrained slot: argmax-verified or plain ones in
        one batched call, sampled streams' drafts by the rejection rule. Constrained slots are
        sampled in ``_update``, each within its grammar's time budget."""
        plain = [slot for slot in step.sample if slot.current.owner.grammar is None]
        drawn = {id(s) for s in plain if s.draft and s.current.owner.params.temperature > 0}
        direct = [s for s in plain if id(s) not in drawn]
        picks = [(s.current.owner.sampler, row) for s in direct for row in (s.row, *s.draft_rows)]
        sampled = iter(self.executor.sample_all(picks))
        tokens = {id(s): [next(sampled) for _ in range(1 + len(s.draft))] for s in direct}
        for slot in plain:
            if id(slot) in drawn:
                tokens[id(slot)] = self._draw_verified(slot)
        return tokens

    def _update(self, step: Step, tokens: dict[int, list[int]]) -> None:
        for slot in step.sample:
            if slot.current.owner.first_token_at is None and not np.isfinite(self.executor.logits(slot.row)).all():
                self._unusable(slot)
            elif id(slot) not in tokens:
                self._emit_constrained(slot)
            elif slot.draft:
                self._emit_verified(slot, tokens[id(slot)])
            else:
                token = tokens[id(slot)][0]
                self._emit(slot, token, margin=self._margin(slot, slot.row, token))

    def _draw_verified(self, slot: Slot) -> list[int]:
        """A sampled stream's draft, verified by the rejection rule: its text is distributed exactly
        as without drafting."""
        req: Generation = slot.current.owner
        if req.rng is None:
            req.rng = np.random.default_rng(req.params.seed)
        rows = (slot.row, *slot.draft_rows)
        return rejection.verify(slot.draft, lambda i: rejection.target_dist(self.executor.logits(rows[i]), req.params),
                                req.rng)

    def _emit_verified(self, slot: Slot, predicted: list[int]) -> None:
        """A drafted slot: keep the drafts the model agrees with, drop the others' KV cells, and
        emit the accepted tokens plus the model's own next one, each through the usual checks."""
        emit, keep = self.planner.verified(slot, predicted)
        self.executor.trim(slot.seq, keep)
        kept = len(emit) - 1  # accepted drafts: all but the model's own last token
        self.stats["draft_tokens"] += len(slot.draft)
        self.stats["draft_accepted"] += kept
        req: Generation = slot.current.owner
        req.stats.drafted += len(slot.draft)
        req.stats.accepted += kept
        rows = (slot.row, *slot.draft_rows)
        for i, token in enumerate(emit):  # the last has no cell: the next step's input
            self._emit(slot, token, evaluated=i < len(emit) - 1, margin=self._margin(slot, rows[i], token))
            if slot.job is None:  # finished part-way (stop, length, end of text): drop the cells past it
                self.executor.trim(slot.seq, len(slot.cached))
                return

    def _emit_constrained(self, slot: Slot) -> None:
        """A grammar is applied to the whole vocabulary on this thread, so a schema with thousands
        of alternatives would slow every stream's step: each such request gets a time budget per
        token (plus a grace for its first), and one that overruns it ends with an error instead."""
        req: Generation = slot.current.owner
        started = time.perf_counter()
        token = self.executor.sample_all([(req.sampler, slot.row)])[0]
        req.grammar_s += time.perf_counter() - started
        budget = GRAMMAR_GRACE_S + GRAMMAR_TOKEN_S * (slot.produced + 1)
        if req.grammar_s > budget:
            job = self.planner.release(slot)
            assert job is not None
            per_token = req.grammar_s / (slot.produced + 1) * 1000
            return self._end(req, "error", RequestTooCostlyError(
                f"the response_format costs {per_token:.0f} ms per token to enforce here (at most "
                f"{GRAMMAR_TOKEN_S * 1000:.0f}); simplify the schema"))
        return self._emit(slot, token)

    def _unusable(self, slot: Slot) -> None:
        """Damaged weights (bit rot the load-time stat check cannot see, random data) give NaN or
        infinite scores: a request then ends with that said, not with empty text and success.
        Checked once per request, on the scores its first token comes from."""
        req: Generation = slot.current.owner
        self.planner.release(slot)
        self._end(req, "error", DamagedModelError(
            "the model gave no usable scores for this prompt (NaN or infinite logits): its weights may be "
            "damaged; `autoglm models verify` checks them"))

    def _margin(self, slot: Slot, row: int, token: int) -> float | None:
        """A greedy speculating stream's lead of ``token`` (the row's argmax, already taken) over the
        runner-up: what a repeat of its prompt drafts by (StepPlanner.accept). One maximum over the
        row's other scores, about 0.02 ms."""
        if not (slot.current.greedy and slot.current.speculate):
            return None
        logits = self.executor.logits(row)
        second = max(logits[:token].max(initial=-np.inf), logits[token + 1:].max(initial=-np.inf))
        return float(logits[token] - second)

    def _emit(self, slot: Slot, token: int, evaluated: bool = False, margin: float | None = None) -> None:
        req: Generation = slot.current.owner
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
            req.stats.prefill_s = req.first_token_at - req.submitted
        if self.executor.is_eog(token) and not req.params.ignore_eos:
            return self._finish(slot, "stop")
        self.planner.accept(slot, token, evaluated, margin)
        req.stats.completion_tokens = slot.produced
        self.stats["tokens_generated"] += 1
        req.text += req.decoder.decode(self.executor.piece(token))
        safe, hit = stop_split(req.text, req.params.stop) if req.params.stop else (req.text, None)
        if safe:
            req.put(Event(text=safe))
            req.text = req.text[len(safe):]
        if hit:
            req.stop_hit = hit
            return self._finish(slot, "stop")
        if slot.produced >= slot.max_tokens:
            return self._finish(slot, "length")
        return None

    def _finish(self, slot: Slot, reason: str) -> None:
        job = self.planner.release(slot)
        assert job is not None
        self._end(job.owner, reason)

    def _end(self, req: Generation, reason: str, error: AutoGLMError | None = None) -> None:
        if reason not in ("cancelled", "error") and req.decoder is not None:
            rest = req.text + req.decoder.decode(b"", final=True)  # held back for a stop string that never came
            text = stop_split(rest, req.params.stop)[0] if rest else ""
            if text:
                req.put(Event(text=text))
        req.stats.finish_reason = reason
        if req.first_token_at is not None:
            req.stats.decode_s = time.perf_counter() - req.first_token_at
        if req.sampler is not None:
            self.executor.free_sampler(req.sampler)
            req.sampler = None
        req.put(Event(done=True, finish_reason=reason, error=error, stop=req.stop_hit))


__all__ = ["Event", "QueueFullError", "Generation", "Scheduler", "SchedulerFailedError"]
