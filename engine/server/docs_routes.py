"""The documents routes: ``/v1/docs/search`` and ``/v1/docs/ask`` (our own, beside OpenAI's).

``ask`` answers in the shape of a chat completion (streamed or not) from the collection's
passages, with the sources added: a ``citations`` list on the whole answer, or, streamed, one
``{"object": "docs.citations", "citations": [...]}`` event before the first chunk. The search (an
encoder and SQLite) runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from autoglm.engine.docs import ask as answers
from autoglm.engine.docs.search import MAX_HITS, MAX_QUERY_CHARS, Hit, search_collection
from autoglm.engine.server.protocol import ChatRequest, Message, Reply, Sampling, Usage
from autoglm.engine.server.serving import OpenAIServing


class SearchRequest(BaseModel):
    collection: str = Field(min_length=1, max_length=64)
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(default=5, ge=1, le=MAX_HITS)


class AskRequest(Sampling):
    collection: str = Field(min_length=1, max_length=64)
    question: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    k: int = Field(default=5, ge=1, le=MAX_HITS)
    temperature: float = Field(default=0.0, ge=0, le=2)


def docs_router(serving: OpenAIServing) -> APIRouter:
    router = APIRouter(prefix="/v1/docs")

    async def hits(collection: str, query: str, k: int) -> list[Hit]:
        encoder = serving.runtime.encoder
        return await asyncio.to_thread(search_collection, collection, query, k, lambda name: encoder(name)[1])

    @router.post("/search")
    async def search(body: SearchRequest) -> dict[str, Any]:
        return {"object": "list", "data": [h.json() for h in await hits(body.collection, body.query, body.k)]}

    @router.post("/ask")
    async def ask(body: AskRequest, request: Request) -> Any:
        found = answers.relevant(await hits(body.collection, body.question, body.k))
        citations = answers.citations(found)
        if not found:  # nothing on topic: said without asking the model (it would answer from its own knowledge)
            said = Reply("chat", serving.runtime.model_name)
            if body.stream:
                events = [json.dumps({"object": "docs.citations", "citations": []}), said.chunk(role=True)[6:],
                          said.chunk(answers.NOT_FOUND)[6:], said.chunk(finish="stop")[6:]]
                text = "".join(f"data: {e.strip()}\n\n" for e in events) + "data: [DONE]\n\n"
                return StreamingResponse(iter([text]), media_type="text/event-stream")
            usage = Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
            return said.whole(answers.NOT_FOUND, "stop", usage, []) | {"citations": []}
        messages = [Message(role=m["role"], content=m["content"])  # type: ignore[arg-type]
                    for m in answers.messages(body.question, found)]
        chat = ChatRequest(messages=messages, **body.model_dump(exclude={"collection", "question", "k"}))
        reply = await serving.chat(chat, request)
        if isinstance(reply, dict):
            return reply | {"citations": citations}
        if isinstance(reply, StreamingResponse):
            head = "data: " + json.dumps({"object": "docs.citations", "citations": citations}) + "\n\n"
            reply.body_iterator = _prepend(head, reply.body_iterator)
        return reply

    return router


async def _prepend(head: str, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield head
    async for part in rest:
        yield part
