"""The OpenAI-compatible routes (``/v1/*``), ``/health`` and ``/metrics``: thin, each hands the
validated request to the serving layer."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from autoglm.engine.models.manager import installed
from autoglm.engine.server.metrics import Metrics
from autoglm.engine.server.protocol import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    EmbeddingRequest,
    ExtractRequest,
    RerankRequest,
)
from autoglm.engine.server.serving import OpenAIServing


def openai_router(serving: OpenAIServing, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.api_route("/health", methods=["GET", "HEAD"])
    @router.api_route("/health/ready", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        """200 while the engine takes requests; 503 with the reason once a step has failed or while
        it drains before stopping. HEAD too: load balancers probe with it."""
        return serving.health()

    @router.api_route("/health/live", methods=["GET", "HEAD"])
    async def live() -> JSONResponse:
        """200 while the process answers at all, draining included: a liveness probe must not kill a
        replica that is finishing its streams (a failed engine exits by itself for a restart)."""
        return JSONResponse({"status": "alive"})

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The installed chat models, the one the server started with first: any of them can be
        asked for (the pool loads it)."""
        names = [serving.runtime.model_name] + sorted(
            m.name for m in await asyncio.to_thread(installed)
            if m.format == "gguf" and m.name != serving.runtime.model_name)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "local"}
                                           for n in names]}

    @router.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Any:
        return await serving.chat(body, request)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await serving.completion(body, request)

    @router.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Any:
        return await serving.embeddings(body)

    @router.post("/v1/rerank")
    @router.post("/rerank")
    async def rerank(body: RerankRequest) -> Any:
        """Documents by relevance to a query (llama-server's and Jina's shape; ``method`` says how)."""
        return await serving.rerank(body)

    @router.post("/v1/classify")
    async def classify(body: ClassifyRequest) -> Any:
        return await serving.classify(body)

    @router.post("/v1/extract")
    async def extract(body: ExtractRequest, request: Request) -> Any:
        """Objects that validate against ``schema``, one per input text (not part of OpenAI's API)."""
        return await serving.extract(body, request)

    @router.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    return router
