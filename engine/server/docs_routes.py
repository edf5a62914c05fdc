"""The documents routes: ``/v1/docs/search`` and ``/v1/docs/ask`` (our own, beside OpenAI's).

``ask`` answers in the shape of a chat completion (streamed or not) from the collection's
passages, with the sources added: ``citations`` (labels) and ``passages`` (the hits) on the whole
answer, or, streamed, one ``{"object": "docs.citations", "citations": [...], "passages": [...]}``
event before the first chunk. The search (an
encoder and SQLite) runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from autoglm.engine.docs import ask as answers
from autoglm.engine.docs.collection import check_roots, sync
from autoglm.engine.docs.index import DocIndex, check_name
from autoglm.engine.docs.search import MAX_HITS, MAX_QUERY_CHARS, Hit, search_collection
from autoglm.engine.server.management import Send, sse_of, thread_stream
from autoglm.engine.server.protocol import ChatRequest, Message, Reply, Sampling, Usage
from autoglm.engine.server.serving import OpenAIServing


class SearchRequest(BaseModel):
    collection: str = Field(min_length=1, max_length=64)
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(default=5, ge=1, le=MAX_HITS)
    rerank: str | None = Field(default=None, min_length=1, max_length=128)  # an embedding model's name


class AddRequest(BaseModel):
    collection: str = Field(min_length=1, max_length=64)
    paths: list[str] = Field(min_length=1, max_length=256)


class AskRequest(Sampling):
    collection: str = Field(min_length=1, max_length=64)
    question: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(default=5, ge=1, le=MAX_HITS)
    rerank: str | None = Field(default=None, min_length=1, max_length=128)
    temperature: float = Field(default=0.0, ge=0, le=2)


def docs_router(serving: OpenAIServing) -> APIRouter:
    router = APIRouter(prefix="/v1/docs")

    async def hits(body: SearchRequest | AskRequest, query: str) -> list[Hit]:
        runtime = serving.runtime

        def work() -> list[Hit]:  # opening an encoder and embedding: off the event loop
            return search_collection(body.collection, query, body.k, lambda name: runtime.encoder(name)[1],
                                     rerank=runtime.reranker(body.rerank))

        return await asyncio.to_thread(work)

    @router.post("/search")
    async def search(body: SearchRequest) -> dict[str, Any]:
        return {"object": "list", "data": [h.json() for h in await hits(body, body.query)]}

    @router.post("/ask")
    async def ask(body: AskRequest, request: Request) -> Any:
        found = answers.relevant(await hits(body, body.question))
        # the sources: their labels, and the passages themselves (a window shows one when its citation
        # is clicked, without searching again)
        sources = {"citations": answers.citations(found), "passages": [h.json() for h in found]}
        head = "data: " + json.dumps({"object": "docs.citations", **sources}) + "\n\n"
        if not found:  # nothing on topic: said without asking the model (it would answer from its own knowledge)
            said = Reply("chat", serving.runtime.model_name)
            if body.stream:
                return StreamingResponse(iter([head, said.chunk(role=True), said.chunk(answers.NOT_FOUND),
                                               said.chunk(finish="stop"), "data: [DONE]\n\n"]),
                                         media_type="text/event-stream")
            usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
            return said.whole(answers.NOT_FOUND, "stop", usage, []) | sources
        messages = [Message(role=m["role"], content=m["content"])  # type: ignore[arg-type]
                    for m in answers.messages(body.question, found)]
        chat = ChatRequest(messages=messages, **body.model_dump(exclude={"collection", "question", "k", "rerank"}))
        reply = await serving.chat(chat, request)
        if isinstance(reply, dict):
            return reply | sources
        if isinstance(reply, StreamingResponse):
            reply.body_iterator = _prepend(head, reply.body_iterator)
        return reply

    return router


def docs_management_router(serving: OpenAIServing) -> APIRouter:
    """``/autoglm/docs``: the desktop app's collections (management: it reads the user's files and
    writes the index). ``POST /autoglm/docs/add`` streams one event per file (``path``, ``what``),
    then ``{"done": {...}}``; closing the stream stops between files."""
    router = APIRouter(prefix="/autoglm/docs")

    @router.get("")
    async def collections() -> dict[str, Any]:
        def work() -> list[dict[str, object]]:
            with DocIndex() as index:
                return index.summary()

        return {"data": await asyncio.to_thread(work)}

    @router.delete("/{name}")
    async def remove(name: str) -> dict[str, Any]:
        def work() -> None:
            with DocIndex() as index:
                index.remove(name)

        await asyncio.to_thread(work)
        return {"removed": name}

    @router.post("/add")
    async def add(body: AddRequest) -> StreamingResponse:
        check_name(body.collection)  # a bad name or no such path is this request's 400, before the stream
        check_roots([Path(p) for p in body.paths])

        def work(send: Send, cancel: threading.Event) -> dict[str, Any]:
            with DocIndex() as index:
                known = body.collection in index.names()
                manifest, encoder = serving.runtime.encoder(index.collection(body.collection)[1] if known else None)
                report = sync(index, body.collection, manifest.name, encoder, [Path(p) for p in body.paths],
                              lambda path, what: send({"path": path, "what": what}), cancel)
            return {"done": {"indexed": len(report.indexed), "chunks": report.chunks, "unchanged": report.unchanged,
                             "removed": len(report.removed), "skipped": len(report.skipped),
                             "cancelled": report.cancelled}}

        return await sse_of(await thread_stream(work, "docs-add"))

    return router


async def _prepend(head: str, rest: AsyncIterable[Any]) -> AsyncIterator[Any]:
    yield head
    async for part in rest:
        yield part
