"""Serving OpenAI requests over the runtime: prompt building, submission, streaming.

Everything slow or shaped by the request (template rendering, tokenizing, grammar compilation,
encoder calls) runs in a worker thread, never on the event loop, so one request cannot stall
``/health`` or the other streams. A client that goes away cancels its generation, streamed or not.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from autoglm.engine.backends.llama_lib import llama_cpp
from autoglm.engine.errors import InvalidArgumentError, ModelNotFoundError, QueueFullError
from autoglm.engine.router import route
from autoglm.engine.runtime import Labeled, Runtime
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.scheduler import Event
from autoglm.engine.server.lifecycle import Lifecycle
from autoglm.engine.server.metrics import Metrics
from autoglm.engine.server.protocol import (
    MAX_EXTRACT_INPUTS,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
    ExtractRequest,
    Reply,
    ResponseFormat,
    Sampling,
    Usage,
    error,
    refusal,
    sse_error,
    sse_refusal,
)
from autoglm.engine.tasks.extract import Extraction
from autoglm.engine.tasks.prompt_tune import is_prompt
from autoglm.engine.tasks.schema_grammar import schema_grammar
from autoglm.engine.tasks.tools import OPEN, ToolCall, ToolUse

DISCONNECT_POLL_S = 1.0


async def _gather(first: Event, events: AsyncGenerator[Event, None]) -> tuple[str, Event]:
    """A reply's whole text and its last event."""
    parts, ev = [first.text], first
    while not ev.done:
        ev = await events.__anext__()
        parts.append(ev.text)
    return "".join(parts), ev


def grammar_for(fmt: ResponseFormat | None) -> str | None:
    """The request's response format as a GBNF grammar (bounded: see ``schema_grammar``)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return llama_cpp.llama_grammar.JSON_GBNF
    return schema_grammar(fmt.json_schema.schema_ if fmt.json_schema else {}, "response_format json_schema")


def _finish_reason(ev: Event) -> str:
    return "length" if ev.finish_reason == "length" else "stop"


async def _watch_disconnect(request: Request, req: Any) -> None:
    """Polled by the clock, not only when tokens stop: a non-streamed reply generates tokens all
    along, and its client may have gone away long ago."""
    while not req.cancelled.is_set():
        await asyncio.sleep(DISCONNECT_POLL_S)
        if await request.is_disconnected():
            req.cancel()
            return


class Relay:
    """Hands the scheduler thread's events to the event loop, one wake-up per batch: a step emits
    a token for every running stream at once, and one ``call_soon_threadsafe`` (a syscall and a
    loop iteration) each would be CPU taken from llama.cpp's threads on a small board."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[tuple[asyncio.Queue[Event], Event]] = []
        self.lock = threading.Lock()

    def put(self, queue: asyncio.Queue[Event], event: Event) -> None:  # scheduler thread
        with self.lock:
            self.items.append((queue, event))
            first = len(self.items) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop is closed: a request that outlived the server has nobody to tell
                pass

    def _flush(self) -> None:  # event loop
        with self.lock:
            items, self.items = self.items, []
        for queue, event in items:
            queue.put_nowait(event)


class OpenAIServing:
    def __init__(self, runtime: Runtime, metrics: Metrics, retry_after_s: int = 1,
                 lifecycle: Lifecycle | None = None) -> None:
        self.runtime, self.metrics, self.retry_after_s = runtime, metrics, retry_after_s
        self.lifecycle = lifecycle or Lifecycle()
        self._relay: Relay | None = None

    def relay(self) -> Relay:
        loop = asyncio.get_running_loop()
        if self._relay is None or self._relay.loop is not loop:  # one per loop (tests run several)
            self._relay = Relay(loop)
        return self._relay

    # --- text generation ----------------------------------------------------------------------
    def at_capacity(self) -> JSONResponse:
        return refusal(QueueFullError("the server is at capacity; retry shortly"), self.retry_after_s)

    def check_model(self, model: str | None) -> None:
        """The ``model`` field is honoured: a name this engine does not serve is a 404, never another
        model's answer. ``default`` (or none) means the served one."""
        if model not in (None, "", "default", self.runtime.model_name):
            raise ModelNotFoundError(f"the model '{model[:80]}' is not served here; this server serves "
                                     f"'{self.runtime.model_name}' (GET /v1/models)")

    async def chat(self, body: ChatRequest, request: Request) -> Any:
        self.check_model(body.model)
        messages = [m.plain() for m in body.messages]
        use = await asyncio.to_thread(ToolUse.of, body.tools, body.tool_choice, body.parallel_tool_calls)
        if use is not None and body.response_format is not None and body.response_format.type != "text":
            raise InvalidArgumentError("response_format and tools cannot be combined: a tool call has its own format")
        tokens, grammar = await asyncio.gather(
            asyncio.to_thread(self.runtime.prompts.tokens, messages, use.listed if use else None),
            asyncio.to_thread(grammar_for, body.response_format))
        if use is not None and use.grammar is not None:
            return await self._respond_tools(body, tokens, use, request)
        return await self._respond("chat", body, tokens, grammar, request)

    async def _respond_tools(self, body: ChatRequest, tokens: list[int], use: ToolUse, request: Request) -> Any:
        """A reply that may call tools: free text until the model opens a call (streamed as
        content), then the calls under their grammar, handed over whole (tasks/tools.py)."""
        params = self._params(body, len(tokens))
        reply = Reply("chat", self.runtime.model_name)
        free = None
        if not use.required:
            free = self._events(tokens, replace(params, stop=[*params.stop, *use.stops()]), None, request,
                                streamed=bool(body.stream))
            try:
                first = await free.__anext__()
            except QueueFullError:
                return self.at_capacity()
        if body.stream:
            return StreamingResponse(self._sse_tools(reply, body, tokens, params, use, free, first if free else None,
                                                     request),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        said, ev = "", None
        if free is not None:
            said, ev = await _gather(first, free)
        calls_text = None
        if ev is None or (ev.stop == OPEN and ev.error is None):
            try:
                calls_text, ev = await self._calls(body, tokens, params, use, said, request)
            except QueueFullError:
                return self.at_capacity()
        calls: list[ToolCall] = []
        if ev.error is None:
            said, calls = use.result(said, calls_text)
        cut = self._cut_short(ev)
        if cut:
            return error(503, cut, "server_error", code="shutting_down")
        if ev.error:
            return refusal(ev.error, self.retry_after_s)
        usage = await self._usage(tokens, said + "".join(c.arguments for c in calls))
        return reply.whole(said, "tool_calls" if calls else _finish_reason(ev), usage, calls)

    async def _sse_tools(self, reply: Reply, body: ChatRequest, tokens: list[int], params: SamplingParams,
                         use: ToolUse, free: AsyncGenerator[Event, None] | None, first: Event | None,
                         request: Request) -> AsyncIterator[str]:
        yield reply.chunk(role=True)
        said, sent, ev = "", 0, first
        try:
            while free is not None and ev is not None:
                said += ev.text
                if len(said) > sent and not use.holds(said):  # text, and no bare call in the making
                    yield reply.chunk(said[sent:])
                    sent = len(said)
                if ev.done:
                    break
                ev = await free.__anext__()
            calls_text = None
            if ev is None or (ev.stop == OPEN and ev.error is None):
                try:
                    calls_text, ev = await self._calls(body, tokens, params, use, said, request)
                except QueueFullError as exc:
                    yield sse_refusal(exc)
                    yield "data: [DONE]\n\n"
                    return
            calls: list[ToolCall] = []
            if ev.error is None:
                content, calls = use.result(said, calls_text)
                if calls:
                    yield reply.calls(calls)
                elif len(content) > sent:  # held back, or a call cut short by max_tokens: the model's words
                    yield reply.chunk(content[sent:])
            for line in self._ending(reply, ev, "tool_calls" if calls else None):
                yield line
        finally:
            if free is not None:
                await free.aclose()

    async def _calls(self, body: ChatRequest, tokens: list[int], params: SamplingParams, use: ToolUse, said: str,
                     request: Request) -> tuple[str, Event]:
        """The calls' phase: the prompt with what was said and the opened call, under the grammar."""
        model = self.runtime.model
        opened = tokens + await asyncio.to_thread(use.opening, said, model.tokenize)
        budget = self.runtime.sampling(len(opened), body.max_tokens)  # a user's stop string may sit in arguments
        events = self._events(opened, replace(params, max_tokens=budget.max_tokens, stop=[]), use.grammar, request,
                              streamed=False)
        first = await events.__anext__()
        return await _gather(first, events)

    async def completion(self, body: CompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        tokens = await asyncio.to_thread(self.runtime.model.tokenize, body.prompt, True)
        return await self._respond("text", body, tokens, None, request)

    def _params(self, body: Sampling, prompt_len: int) -> SamplingParams:
        return self.runtime.sampling(prompt_len, body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                     seed=body.seed, stop=body.stop_list(), ignore_eos=body.ignore_eos)

    async def _events(self, tokens: list[int], params: SamplingParams, grammar: str | None,
                      request: Request, streamed: bool) -> AsyncGenerator[Event, None]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        relay = self.relay()
        req = await asyncio.to_thread(self.runtime.scheduler.submit, tokens, params, grammar,
                                      lambda ev: relay.put(queue, ev), streamed)
        self.lifecycle.track(req)
        started = time.perf_counter()
        watcher = asyncio.create_task(_watch_disconnect(request, req))
        try:
            while True:
                event = await queue.get()  # a plain get: a timer per token is loop work that takes a core
                if event.done:
                    if req.first_token_at is not None:  # stamped by the scheduler (a non-streamed reply has one event)
                        self.metrics.ttft.observe(req.first_token_at - req.submitted)
                    self.metrics.latency.observe(time.perf_counter() - started)
                yield event
                if event.done:
                    return
        finally:
            watcher.cancel()
            req.cancel()  # a client that went away (or an error) stops its generation
            self.lifecycle.untrack(req)

    def _cut_short(self, ev: Event) -> str | None:
        """Why a reply ended early when the server stopped it (the drain's deadline), else None."""
        if ev.finish_reason == "cancelled" and self.lifecycle.stopping:
            return "the server shut down before this reply finished; ask again"
        return None

    async def _respond(self, kind: Literal["chat", "text"], body: Sampling, tokens: list[int], grammar: str | None,
                       request: Request) -> Any:
        params = self._params(body, len(tokens))
        reply = Reply(kind, self.runtime.model_name)
        events = self._events(tokens, params, grammar, request, streamed=bool(body.stream))
        try:
            first = await events.__anext__()  # submitted now: a full queue is a 429 before any byte is sent
        except QueueFullError:
            return self.at_capacity()
        if body.stream:
            return StreamingResponse(self._sse(reply, first, events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, ev = await _gather(first, events)
        cut = self._cut_short(ev)
        if cut:
            return error(503, cut, "server_error", code="shutting_down")
        if ev.error:
            return refusal(ev.error, self.retry_after_s)
        return reply.whole(text, _finish_reason(ev), await self._usage(tokens, text))

    async def _usage(self, tokens: list[int], text: str) -> Usage:
        completion = len(await asyncio.to_thread(self.runtime.model.tokenize, text, False)) if text else 0
        return Usage(prompt_tokens=len(tokens), completion_tokens=completion, total_tokens=len(tokens) + completion)

    def _ending(self, reply: Reply, ev: Event, finish: str | None = None) -> list[str]:
        """A stream's last lines: its error, the shutdown that cut it, or its finish reason."""
        cut = self._cut_short(ev)
        if ev.error:
            last = sse_refusal(ev.error)
        elif cut:
            last = sse_error(cut, code="shutting_down")
        else:
            last = reply.chunk(finish=finish or _finish_reason(ev))
        return [last, "data: [DONE]\n\n"]

    async def _sse(self, reply: Reply, first: Event, events: AsyncGenerator[Event, None]) -> AsyncIterator[str]:
        if reply.kind == "chat":
            yield reply.chunk(role=True)
        ev = first
        try:
            while True:
                if ev.text:
                    yield reply.chunk(ev.text)
                if ev.done:
                    for line in self._ending(reply, ev):
                        yield line
                    return
                ev = await events.__anext__()
        finally:
            await events.aclose()  # a disconnected client cancels its generation now

    # --- encoders -----------------------------------------------------------------------------
    async def embeddings(self, body: EmbeddingRequest) -> Any:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) and t for t in texts):
            return error(400, "input must be a non-empty string or list of strings", param="input")

        done = await asyncio.to_thread(self.runtime.embed, texts, body.model)
        return {"object": "list", "model": done.model,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                         for i, v in enumerate(done.vectors)],
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    async def classify(self, body: ClassifyRequest) -> Any:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            return error(400, "input must not be empty", param="input")

        def work() -> Labeled:
            # a tuned prompt generates once per text, so a request is bounded as extract's is
            if len(texts) > MAX_EXTRACT_INPUTS and is_prompt(route("classify", body.model) or ""):
                raise InvalidArgumentError(f"a tuned prompt labels at most {MAX_EXTRACT_INPUTS} texts per "
                                           f"request, got {len(texts)}")
            return self.runtime.classify(texts, model=body.model, labels=body.labels, exact=body.exact)

        try:
            done = await asyncio.to_thread(work)
        except QueueFullError:  # a tuned prompt generates: the queue can be full
            return self.at_capacity()
        # correctable: a trained classifier that keeps its examples (POST /autoglm/classifiers/NAME/corrections)
        return {"object": "list", "truncated": done.truncated, "labels": done.labels, "correctable": done.correctable,
                "data": [{"index": i, "label": p.label, "confidence": p.confidence, "exit_layer": p.exit_layer,
                          "review": p.review}
                         for i, p in enumerate(done.predictions)]}

    async def extract(self, body: ExtractRequest, request: Request) -> Any:
        self.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            return error(400, "input must not be empty", param="input")
        cancel = threading.Event()

        def work() -> list[Extraction]:
            runtime = self.runtime
            extractor = runtime.extractor(body.schema_, max_tokens=body.max_tokens)
            return list(extractor.extract_many(texts, min(len(texts), runtime.scheduler.parallel), cancel))

        task = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            while not task.done():  # a client that goes away stops its texts' generations
                await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if not task.done() and await request.is_disconnected():
                    cancel.set()
        finally:
            if not task.done():  # the handler itself was cancelled (shutdown)
                cancel.set()
        try:
            results = task.result()
        except QueueFullError:  # more clients than the queue holds: a 429 for the whole request, as for chat
            return self.at_capacity()
        return {"object": "list", "model": self.runtime.model_name,
                "data": [{"index": i, "object": r.data, "error": r.error} for i, r in enumerate(results)]}

    def health(self) -> JSONResponse:
        ok, reason = self.runtime.health()
        if ok and self.lifecycle.draining:
            ok, reason = False, "draining: finishing the requests in flight before stopping"
        status = "ok" if ok else ("draining" if self.lifecycle.draining else "failed")
        scheduler = self.runtime.scheduler
        return JSONResponse({"status": status, "reason": None if ok else reason,
                             "model": self.runtime.model_name, "active": scheduler.active,
                             "queued": scheduler.queue_depth}, status_code=200 if ok else 503)
