"""Serving OpenAI requests over the runtime: prompt building, submission, streaming.

Everything slow or shaped by the request (template rendering, tokenizing, grammar compilation,
encoder calls) runs in a worker thread, never on the event loop, so one request cannot stall
``/health`` or the other streams. A client that goes away cancels its generation, streamed or not.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from autoglm.engine.backends.llama_lib import llama_cpp
from autoglm.engine.errors import InvalidArgumentError, ModelNotFoundError, QueueFullError
from autoglm.engine.router import route
from autoglm.engine.runtime import Labeled, Runtime
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.server.lifecycle import Lifecycle
from autoglm.engine.server.metrics import Metrics
from autoglm.engine.server.pool import ModelPool
from autoglm.engine.server.protocol import (
    MAX_EXTRACT_INPUTS,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
    ExtractRequest,
    PromptDetails,
    Reply,
    RerankRequest,
    ResponseFormat,
    Sampling,
    Usage,
    error,
    refusal,
    sse_error,
    sse_refusal,
)
from autoglm.engine.server.replies import DISCONNECT_POLL_S, Piece, Replier
from autoglm.engine.tasks.extract import Extraction
from autoglm.engine.tasks.prompt_tune import is_prompt
from autoglm.engine.tasks.schema_grammar import schema_grammar
from autoglm.engine.tasks.tools import ToolUse


def grammar_for(fmt: ResponseFormat | None) -> str | None:
    """The request's response format as a GBNF grammar (bounded: see ``schema_grammar``)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return llama_cpp.llama_grammar.JSON_GBNF
    return schema_grammar(fmt.json_schema.schema_ if fmt.json_schema else {}, "response_format json_schema")


@dataclass
class Started:
    """A generation under way: its model, prompt length, and first piece (the rest to come)."""

    runtime: Runtime
    prompt_tokens: int
    first: Piece
    pieces: AsyncGenerator[Piece, None]


Build = Callable[[Runtime], Awaitable[tuple[list[int], str | None, ToolUse | None]]]
Params = Callable[[Runtime, int], SamplingParams]


class OpenAIServing:
    """The serving layer both APIs share (generation over the model pool, encoders over the
    primary model), with OpenAI's shapes for its own routes."""

    def __init__(self, pool: ModelPool, metrics: Metrics, retry_after_s: int = 1,
                 lifecycle: Lifecycle | None = None) -> None:
        self.pool, self.metrics, self.retry_after_s = pool, metrics, retry_after_s
        self.lifecycle = lifecycle or Lifecycle()
        self.replier = Replier(metrics, self.lifecycle)

    @property
    def runtime(self) -> Runtime:
        """The model the server started with: encoders, health, management."""
        return self.pool.primary

    def check_model(self, model: str | None) -> None:
        """For the tasks that run on the model the server started with (extract): another name is
        a 404, never another model's answer. ``default`` (or none) means that one."""
        if model not in (None, "", "default", self.runtime.model_name):
            raise ModelNotFoundError(f"the model '{model[:80]}' is not the one this server extracts with; it "
                                     f"uses '{self.runtime.model_name}'")

    # --- text generation ----------------------------------------------------------------------
    def at_capacity(self, exc: QueueFullError | None = None) -> JSONResponse:
        return refusal(exc or QueueFullError("the server is at capacity; retry shortly"), self.retry_after_s)

    async def start(self, model: str | None, keep_alive: float | int | str | None, build: Build, params: Params,
                    request: Request, streamed: bool) -> Started:
        """Any reply of any installed model, for both APIs: the model leased from the pool (loaded
        on demand) until the reply ends, its prompt built (``build``), the generation submitted. A
        full queue or a pool with no room raises ``QueueFullError`` before any byte is sent."""
        entry = await self.pool.acquire(model, keep_alive)
        try:
            runtime = entry.runtime
            tokens, grammar, use = await build(runtime)
            pieces = self.replier.pieces(runtime, tokens, params(runtime, len(tokens)), grammar, use, request,
                                         streamed, ended=lambda: self.pool.release(entry))
        except BaseException:
            await self.pool.release(entry)
            raise
        return Started(runtime, len(tokens), await pieces.__anext__(), pieces)  # the lease ends with the pieces

    def chat_builder(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                     tool_choice: str | dict[str, Any] | None, parallel: bool, fmt: ResponseFormat | None) -> Build:
        """A chat request's prompt tokens, response grammar and tool use, built in worker threads
        (templates, tokenizers and grammars are work): shared by OpenAI's and Ollama's routes."""

        async def build(runtime: Runtime) -> tuple[list[int], str | None, ToolUse | None]:
            use = await asyncio.to_thread(ToolUse.of, tools, tool_choice, parallel)
            if use is not None and fmt is not None and fmt.type != "text":
                raise InvalidArgumentError("a response format and tools cannot be combined: a tool call has its own "
                                           "format")
            tokens, grammar = await asyncio.gather(
                asyncio.to_thread(runtime.prompts.tokens, messages, use.listed if use else None),
                asyncio.to_thread(grammar_for, fmt))
            return tokens, grammar, use

        return build

    @staticmethod
    def text_builder(prompt: str, fmt: ResponseFormat | None = None) -> Build:
        """A raw prompt (no template): ``/v1/completions``, Ollama's ``raw`` generate."""

        async def build(runtime: Runtime) -> tuple[list[int], str | None, ToolUse | None]:
            tokens, grammar = await asyncio.gather(asyncio.to_thread(runtime.model.tokenize, prompt, True),
                                                   asyncio.to_thread(grammar_for, fmt))
            return tokens, grammar, None

        return build

    async def chat(self, body: ChatRequest, request: Request) -> Any:
        build = self.chat_builder([m.plain() for m in body.messages], body.tools, body.tool_choice,
                                  body.parallel_tool_calls, body.response_format)
        return await self._respond("chat", body, build, request)

    async def completion(self, body: CompletionRequest, request: Request) -> Any:
        return await self._respond("text", body, self.text_builder(body.prompt), request)

    @staticmethod
    def _params(body: Sampling) -> Params:
        return lambda runtime, prompt_len: runtime.sampling(
            prompt_len, body.max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
            stop=body.stop_list(), ignore_eos=body.ignore_eos)

    async def _respond(self, kind: Literal["chat", "text"], body: Sampling, build: Build, request: Request) -> Any:
        try:
            started = await self.start(body.model, None, build, self._params(body), request, bool(body.stream))
        except QueueFullError as exc:  # submitted now: a full queue is a 429 before any byte is sent
            return self.at_capacity(exc)
        reply = Reply(kind, started.runtime.model_name)
        first, pieces = started.first, started.pieces
        if body.stream:
            return StreamingResponse(self._sse(reply, first, pieces), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        last = first
        async with aclosing(pieces):
            while not last.done:
                last = await pieces.__anext__()
        if last.cut:
            return error(503, last.cut, "server_error", code="shutting_down")
        if last.error:
            return refusal(last.error, self.retry_after_s)
        completion = await self.replier.completion_tokens(started.runtime, last)
        prompt = started.prompt_tokens
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                      prompt_tokens_details=PromptDetails(cached_tokens=last.cached_tokens))
        return reply.whole(last.said, last.finish, usage, last.calls)

    async def _sse(self, reply: Reply, first: Piece, pieces: AsyncGenerator[Piece, None]) -> AsyncIterator[str]:
        if reply.kind == "chat":
            yield reply.chunk(role=True)
        piece = first
        async with aclosing(pieces):  # a disconnected client cancels its generation now
            while True:
                if piece.text:
                    yield reply.chunk(piece.text)
                if piece.calls:
                    yield reply.calls(piece.calls)
                if piece.done:
                    if piece.error:
                        yield sse_refusal(piece.error)
                    elif piece.cut:
                        yield sse_error(piece.cut, code="shutting_down")
                    else:
                        yield reply.chunk(finish=piece.finish)
                    yield "data: [DONE]\n\n"
                    return
                piece = await pieces.__anext__()

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

    async def rerank(self, body: RerankRequest) -> Any:
        done = await asyncio.to_thread(self.runtime.rerank, body.query, body.texts(), body.model, body.top_n)
        results = [{"index": r.index, "relevance_score": r.score} | ({"document": {"text": r.text}}
                                                                      if body.return_documents else {})
                   for r in done.results]
        return {"object": "list", "model": done.model, "method": done.method, "truncated": done.truncated,
                "results": results, "usage": {"prompt_tokens": 0, "total_tokens": 0}}

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
