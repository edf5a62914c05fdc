"""Continuous batching over one llama.cpp context: one thread owns it and, every step, packs the
next token of every running sequence and chunks of pending prompts into a single ``llama_decode``
over several sequence ids. Requests join between steps; finished or cancelled ones leave.

Each slot keeps the tokens its KV cells hold after a request ends, so a new request goes to the
slot sharing the longest prefix with it (the same system prompt, the next turn of a chat) and
only the rest of its prompt is computed. Prompt chunks are sized to a step-latency target:
when steps run slow, running streams get their tokens first and prompts wait.
"""

from __future__ import annotations

import codecs
import ctypes
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.backends.llama_lib import llama_cpp
from engine.backends.llamacpp import GenerationStats, SamplingParams, _stop_split
from engine.errors import BackendError, ContextOverflowError, InvalidArgumentError

STEP_TARGET_S = 0.10  # a running stream should get a token at least this often while prompts prefill
MIN_CHUNK, MAX_CHUNK = 32, 512
KV_UNIFIED = False


class QueueFullError(Exception):
    """More requests wait than the queue holds; the server answers 429."""


@dataclass
class Event:
    text: str = ""
    done: bool = False
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    grammar: str | None = None
    events: queue.Queue[Event] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stats: GenerationStats = field(default_factory=GenerationStats)
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    sink: Callable[[Event], None] | None = None  # set by async callers; called from the scheduler thread

    def put(self, event: Event) -> None:
        (self.sink or self.events.put)(event)

    def cancel(self) -> None:
        self.cancelled.set()

    def stream(self, timeout: float | None = None):
        """Blocking iterator of events until the final one (for threads; the server reads the queue)."""
        while True:
            event = self.events.get(timeout=timeout)
            yield event
            if event.done:
                return


@dataclass
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells this sequence holds
    req: Request | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    sampler: Any = None
    last_index: int = -1  # this step's batch row with our logits
    produced: int = 0
    max_tokens: int = 0
    fresh: bool = False  # cached[-1] was sampled but not yet evaluated (no KV cell)
    text: str = ""
    decoder: Any = None


class Scheduler:
    def __init__(self, backend: Any, parallel: int = 4, ctx_per_seq: int = 2048, max_queue: int = 64,
                 threads: int | None = None) -> None:
        if parallel < 1 or parallel > 64:
            raise InvalidArgumentError(f"parallel must be between 1 and 64, got {parallel}")
        self.backend = backend
        self.parallel, self.ctx_per_seq, self.max_queue = parallel, ctx_per_seq, max_queue
        model = backend.llm.model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = parallel * ctx_per_seq
        cparams.n_batch = cparams.n_ubatch = MAX_CHUNK
        cparams.n_seq_max = parallel
        cparams.kv_unified = KV_UNIFIED
        cparams.n_threads = cparams.n_threads_batch = threads or backend.plan.threads
        # Flash attention on, whatever the single-sequence plan says: it skips masked KV cells exactly,
        # which keeps batched output identical to solo output, and measured here it was faster for
        # batches (without it: 8 streams 0.74x of llama-server and batched != solo text).
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not make a context for {parallel} sequences x {ctx_per_seq}")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(MAX_CHUNK + parallel, 0, 1)
        self.slots = [_Slot(i) for i in range(parallel)]
        self._piece = ctypes.create_string_buffer(256)  # one buffer for every token's text (scheduler thread only)
        self.waiting: deque[Request] = deque()
        self.lock = threading.Condition()
        self.chunk = MAX_CHUNK
        self.stopping = False
        self.stats = {"steps": 0, "tokens_generated": 0, "prompt_tokens": 0, "prompt_reused": 0}
        self.thread = threading.Thread(target=self._loop, name="autoglm-scheduler", daemon=True)
        self.thread.start()

    # --- public -------------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams, grammar: str | None = None,
               sink: Callable[[Event], None] | None = None) -> Request:
        params.validate()
        if not prompt:
            raise InvalidArgumentError("the prompt is empty")
        if len(prompt) >= self.ctx_per_seq:
            raise ContextOverflowError(f"the prompt is {len(prompt)} tokens but a sequence holds {self.ctx_per_seq}")
        sampler = self._sampler(params, grammar)  # fails here, in the caller's thread, on a bad grammar
        llama_cpp.llama_sampler_free(sampler)
        req = Request(prompt, params, grammar, sink=sink)
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(req)
            self.lock.notify()
        return req

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return sum(1 for s in self.slots if s.req is not None)

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout=10)
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)

    # --- the scheduler thread -----------------------------------------------------------------
    def _sampler(self, params: SamplingParams, grammar: str | None) -> Any:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if grammar:
            g = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            if not g:
                llama_cpp.llama_sampler_free(chain)
                raise InvalidArgumentError("the response format could not be compiled into a grammar")
            llama_cpp.llama_sampler_chain_add(chain, g)
        if params.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _admit(self) -> None:
        """Move waiting requests into free slots, each to the slot with the longest shared prefix."""
        while self.waiting:
            free = [s for s in self.slots if s.req is None]
            if not free:
                return
            req = self.waiting.popleft()
            if req.cancelled.is_set():
                req.put(Event(done=True, finish_reason="cancelled"))
                continue

            def common(slot: _Slot, req: Request = req) -> int:
                n = 0
                for a, b in zip(slot.cached, req.prompt, strict=False):
                    if a != b:
                        break
                    n += 1
                return n

            slot = max(free, key=common)
            keep = min(common(slot), len(req.prompt) - 1)  # at least one token is evaluated, for logits
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, keep, -1)
            slot.cached = slot.cached[:keep]
            slot.req, slot.pending = req, req.prompt[keep:]
            slot.sampler = self._sampler(req.params, req.grammar)
            slot.produced, slot.text = 0, ""
            slot.max_tokens = min(req.params.max_tokens, self.ctx_per_seq - len(req.prompt))
            slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            req.stats.prompt_tokens, req.stats.prompt_evaluated = len(req.prompt), len(slot.pending)
            self.stats["prompt_tokens"] += len(req.prompt)
            self.stats["prompt_reused"] += keep

    def _add(self, n: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[n] = token
        b.pos[n] = pos
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = seq
        b.logits[n] = logits

    def _build(self) -> int:
        n = 0
        for slot in self.slots:  # running streams first: one token each
            slot.last_index = -1
            if slot.req is not None and not slot.pending and slot.produced > 0:
                self._add(n, slot.cached[-1], len(slot.cached) - 1, slot.seq, True)
                slot.last_index, slot.fresh = n, False
                n += 1
        budget = self.chunk
        for slot in self.slots:  # then prompt chunks, within the step budget
            if slot.req is None or not slot.pending or budget <= 0:
                continue
            take = slot.pending[:budget]
            for j, tok in enumerate(take):
                last = j == len(take) - 1 and len(take) == len(slot.pending)
                self._add(n, tok, len(slot.cached), slot.seq, last)
                slot.cached.append(tok)
                if last:
                    slot.last_index = n
                n += 1
            slot.pending = slot.pending[len(take):]
            budget -= len(take)
        self.batch.n_tokens = n
        return n

    def _finish(self, slot: _Slot, reason: str, error: str | None = None) -> None:
        req = slot.req
        assert req is not None
        tail = slot.decoder.decode(b"", final=True) if slot.decoder and reason != "cancelled" else ""
        if tail and not error:
            text, _ = _stop_split(slot.text + tail, req.params.stop)
            if text:
                req.put(Event(text=text))
        req.stats.finish_reason = reason
        if req.first_token_at is not None:
            req.stats.decode_s = time.perf_counter() - req.first_token_at
        req.put(Event(done=True, finish_reason=reason, error=error))
        llama_cpp.llama_sampler_free(slot.sampler)
        if slot.fresh:
            slot.cached.pop()
        slot.req, slot.sampler, slot.pending, slot.text, slot.fresh = None, None, [], "", False

    def _emit(self, slot: _Slot, token: int) -> None:
        req = slot.req
        assert req is not None
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
            req.stats.prefill_s = req.first_token_at - req.submitted
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            return self._finish(slot, "stop")
        slot.produced += 1
        req.stats.completion_tokens = slot.produced
        self.stats["tokens_generated"] += 1
        slot.cached.append(token)
        slot.fresh = True
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        slot.text += slot.decoder.decode(self._piece.raw[: max(n, 0)])
        safe, hit = _stop_split(slot.text, req.params.stop)
        if safe:
            req.put(Event(text=safe))
            slot.text = slot.text[len(safe):]
        if hit:
            return self._finish(slot, "stop")
        if slot.produced >= slot.max_tokens:
            return self._finish(slot, "length")
        return None

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.stopping and not self.waiting and not any(s.req for s in self.slots):
                    self.lock.wait()
                if self.stopping:
                    return
                self._admit()
            for slot in self.slots:
                if slot.req is not None and slot.req.cancelled.is_set():
                    self._finish(slot, "cancelled")
            if not self._build():
                continue
            started = time.perf_counter()
            rc = llama_cpp.llama_decode(self.ctx, self.batch)
            elapsed = time.perf_counter() - started
            self.stats["steps"] += 1
            if rc != 0:  # the KV state is unknown now: drop every cache and fail what was running
                for slot in self.slots:
                    llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, 0, -1)
                    if slot.req is not None:
                        self._finish(slot, "error", f"llama_decode failed ({rc})")
                    slot.cached = []
                continue
            # adapt the prompt chunk to the step-latency target (AIMD)
            if any(s.req and not s.pending and s.produced for s in self.slots):
                self.chunk = max(MIN_CHUNK, self.chunk // 2) if elapsed > STEP_TARGET_S else min(
                    MAX_CHUNK, self.chunk + MIN_CHUNK)
            else:
                self.chunk = MAX_CHUNK
            for slot in self.slots:
                if slot.req is not None and slot.last_index >= 0:
                    token = llama_cpp.llama_sampler_sample(slot.sampler, self.ctx, slot.last_index)
                    self._emit(slot, token)
