"""A generated reply as wire-neutral pieces: the use case both APIs (OpenAI's SSE, Ollama's
NDJSON) format, once. It submits a prepared prompt to the scheduler, relays its events to the
event loop, cancels the generation when the client goes away, and runs tool calling's two
phases (``tasks/tools.py``): free text that stops where the model opens a call, then the calls
under their grammar.

The first ``__anext__`` of ``Replier.pieces`` submits: a full queue raises ``QueueFullError``
there, before a route has sent a byte, so it can still answer 429.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from autoglm.engine.errors import AutoGLMError
from autoglm.engine.runtime import Runtime
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.scheduler import Event
from autoglm.engine.server.lifecycle import Lifecycle
from autoglm.engine.server.metrics import Metrics
from autoglm.engine.tasks.tools import OPEN, ToolCall, ToolUse

DISCONNECT_POLL_S = 1.0


class Caller(Protocol):
    """Who waits for the reply: an HTTP request (FastAPI's), or the terminal of ``autoglm chat``."""

    async def is_disconnected(self) -> bool: ...


@dataclass
class Piece:
    """Text to send, and on the last piece (``done``) how the reply ended."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    done: bool = False
    finish: str = "stop"  # stop, length or tool_calls
    error: AutoGLMError | None = None
    cut: str | None = None  # the server stopped the reply (its drain's deadline): the client is told why
    said: str = ""  # on the last piece: all the reply's text, for usage counts
    cached_tokens: int = 0  # on the last piece: prompt tokens the KV cache held (OpenAI's usage reports them)


async def _watch_disconnect(request: Caller, req: Any) -> None:
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


def finish_reason(ev: Event) -> str:
    return "length" if ev.finish_reason == "length" else "stop"


class Replier:
    """Replies of any loaded model (``runtime`` per call: the server holds several, ``pool.py``)."""

    def __init__(self, metrics: Metrics | None, lifecycle: Lifecycle) -> None:
        self.metrics, self.lifecycle = metrics, lifecycle
        self._relay: Relay | None = None

    def relay(self) -> Relay:
        loop = asyncio.get_running_loop()
        if self._relay is None or self._relay.loop is not loop:  # one per loop (tests run several)
            self._relay = Relay(loop)
        return self._relay

    async def events(self, runtime: Runtime, tokens: list[int], params: SamplingParams, grammar: str | None,
                     request: Caller, streamed: bool) -> AsyncGenerator[Event, None]:
        """The scheduler's events for one generation; closing the generator cancels it."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        relay = self.relay()
        req = await asyncio.to_thread(runtime.scheduler.submit, tokens, params, grammar,
                                      lambda ev: relay.put(queue, ev), streamed)
        self.lifecycle.track(req)
        started = time.perf_counter()
        watcher = asyncio.create_task(_watch_disconnect(request, req))
        try:
            while True:
                event = await queue.get()  # a plain get: a timer per token is loop work that takes a core
                if event.done and req.first_token_at is not None:  # prefilled: what it did not decode again
                    event = replace(event, cached_tokens=max(0, len(tokens) - req.stats.prompt_evaluated))
                if event.done and self.metrics is not None:  # (the CLI's chat keeps no metrics)
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

    def cut_short(self, ev: Event) -> str | None:
        """Why a reply ended early when the server stopped it (the drain's deadline), else None."""
        if ev.finish_reason == "cancelled" and self.lifecycle.stopping:
            return "the server shut down before this reply finished; ask again"
        return None

    def _last(self, ev: Event, text: str, said: str, calls: list[ToolCall] | None = None) -> Piece:
        return Piece(text, calls or [], True, "tool_calls" if calls else finish_reason(ev), ev.error,
                     self.cut_short(ev), said, ev.cached_tokens)

    async def pieces(self, runtime: Runtime, tokens: list[int], params: SamplingParams, grammar: str | None,
                     use: ToolUse | None, request: Caller, streamed: bool,
                     ended: Callable[[], Awaitable[None]] | None = None) -> AsyncGenerator[Piece, None]:
        """``ended``: called once the reply is over, however it ends (the model's lease)."""
        try:
            if use is None or use.grammar is None:
                said = ""
                async with aclosing(self.events(runtime, tokens, params, grammar, request, streamed)) as events:
                    async for ev in events:
                        said += ev.text
                        yield self._last(ev, ev.text, said) if ev.done else Piece(ev.text)
                return
            async with aclosing(self._with_tools(runtime, tokens, params, use, request, streamed)) as pieces:
                async for piece in pieces:
                    yield piece
        finally:
            if ended is not None:
                await ended()

    async def _with_tools(self, runtime: Runtime, tokens: list[int], params: SamplingParams, use: ToolUse,
                          request: Caller, streamed: bool) -> AsyncGenerator[Piece, None]:
        """Free text until the model opens a call (sent as it comes, unless it may be a bare call),
        then the calls under their grammar, handed over whole on the last piece."""
        said, sent, ev = "", 0, None
        if not use.required:
            free = self.events(runtime, tokens, replace(params, stop=[*params.stop, *use.stops()]), None, request,
                               streamed)
            async with aclosing(free) as events:
                async for ev in events:
                    said += ev.text
                    # only a reply that has sent nothing yet can still turn out to be a bare call (and
                    # asking once text has gone out would re-read the whole reply at every token)
                    if streamed and len(said) > sent and (sent or not use.holds(said)):
                        yield Piece(said[sent:])
                        sent = len(said)
        calls_text = None
        if ev is None or (ev.stop == OPEN and ev.error is None):
            try:
                calls_text, ev = await self._calls(runtime, tokens, params, use, said, request)
            except AutoGLMError as exc:  # a full queue, or no room left in the context for the calls
                if ev is None:  # nothing sent yet: the route answers with the error's status
                    raise
                yield Piece(done=True, error=exc, said=said)
                return
        calls: list[ToolCall] = []
        if ev.error is None:
            said, calls = use.result(said, calls_text)
        yield self._last(ev, said[sent:], said, calls)

    async def _calls(self, runtime: Runtime, tokens: list[int], params: SamplingParams, use: ToolUse, said: str,
                     request: Caller) -> tuple[str, Event]:
        """The calls' phase: the prompt with what was said and the opened call, under the grammar."""
        opened = tokens + await asyncio.to_thread(use.opening, said, runtime.model.tokenize)
        budget = runtime.sampling(len(opened), params.max_tokens)
        # no stop strings: a user's may sit inside the arguments
        calls = replace(params, max_tokens=budget.max_tokens, stop=[])
        text = ""
        async with aclosing(self.events(runtime, opened, calls, use.grammar, request, streamed=False)) as events:
            async for ev in events:
                text += ev.text
        return text, ev

    @staticmethod
    async def completion_tokens(runtime: Runtime, piece: Piece) -> int:
        """The reply's length in tokens (the calls' arguments included), for usage counts."""
        text = piece.said + "".join(c.arguments for c in piece.calls)
        return len(await asyncio.to_thread(runtime.model.tokenize, text, False)) if text else 0
