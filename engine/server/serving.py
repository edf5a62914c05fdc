"""Serving OpenAI requests over the runtime: prompt building, submission, streaming.

Everything slow or shaped by the request (template rendering, tokenizing, grammar compilation,
encoder calls) runs in a worker thread, never on the event loop, so one request cannot stall
``/health`` or the other streams. A client that goes away cancels its generation, streamed or not.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
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
from autoglm.engine.server.protocol import (
    MAX_EXTRACT_INPUTS,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
    ExtractRequest,
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


class OpenAIServing:
    def __init__(self, runtime: Runtime, metrics: Metrics, retry_after_s: int = 1,
                 lifecycle: Lifecycle | None = None) -> None:
        self.runtime, self.metrics, self.retry_after_s = runtime, metrics, retry_after_s
        self.lifecycle = lifecycle or Lifecycle()
        self.replier = Replier(runtime, metrics, self.lifecycle)

    # --- text generation ----------------------------------------------------------------------
    def at_capacity(self) -> JSONResponse:
        return refusal(QueueFullError("the server is at capacity; retry shortly"), self.retry_after_s)

    def check_model(self, model: str | None) -> None:
        """The ``model`` field is honoured: a name this engine does not serve is a 404, never another
        model's answer. ``default`` (or none) means the served one."""
        if model not in (None, "", "default", self.runtime.model_name):
            raise ModelNotFoundError(f"the model '{model[:80]}' is not served here; this server serves "
                                     f"'{self.runtime.model_name}' (GET /v1/models)")

    async def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                          tool_choice: str | dict[str, Any] | None, parallel: bool,
                          fmt: ResponseFormat | None) -> tuple[list[int], str | None, ToolUse | None]:
        """A chat request's prompt tokens, response grammar and tool use, built in worker threads
        (templates, tokenizers and grammars are work): shared by OpenAI's and Ollama's routes."""
        use = await asyncio.to_thread(ToolUse.of, tools, tool_choice, parallel)
        if use is not None and fmt is not None and fmt.type != "text":
            raise InvalidArgumentError("a response format and tools cannot be combined: a tool call has its own format")
        tokens, grammar = await asyncio.gather(
            asyncio.to_thread(self.runtime.prompts.tokens, messages, use.listed if use else None),
            asyncio.to_thread(grammar_for, fmt))
        return tokens, grammar, use

    async def chat(self, body: ChatRequest, request: Request) -> Any:
        self.check_model(body.model)
        tokens, grammar, use = await self.chat_prompt([m.plain() for m in body.messages], body.tools,
                                                      body.tool_choice, body.parallel_tool_calls,
                                                      body.response_format)
        return await self._respond("chat", body, tokens, grammar, request, use)

    async def completion(self, body: CompletionRequest, request: Request) -> Any:
        self.check_model(body.model)
        tokens = await asyncio.to_thread(self.runtime.model.tokenize, body.prompt, True)
        return await self._respond("text", body, tokens, None, request)

    def _params(self, body: Sampling, prompt_len: int) -> SamplingParams:
        return self.runtime.sampling(prompt_len, body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                     seed=body.seed, stop=body.stop_list(), ignore_eos=body.ignore_eos)

    async def _respond(self, kind: Literal["chat", "text"], body: Sampling, tokens: list[int], grammar: str | None,
                       request: Request, use: ToolUse | None = None) -> Any:
        params = self._params(body, len(tokens))
        reply = Reply(kind, self.runtime.model_name)
        pieces = self.replier.pieces(tokens, params, grammar, use, request, streamed=bool(body.stream))
        try:
            first = await pieces.__anext__()  # submitted now: a full queue is a 429 before any byte is sent
        except QueueFullError:
            return self.at_capacity()
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
        completion = await self.replier.completion_tokens(last)
        usage = Usage(prompt_tokens=len(tokens), completion_tokens=completion, total_tokens=len(tokens) + completion)
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
