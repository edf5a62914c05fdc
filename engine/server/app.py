"""The HTTP server assembled from its parts: the guard (key, body limit, counting), CORS, the
OpenAI routes over the serving layer, and the management routes, with errors in OpenAI's shape
everywhere so the official client raises its usual exceptions and a bad request never takes
the server down. Requests carry no file system paths: models are store names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autoglm.engine.errors import AutoGLMError, ModelNotFoundError
from autoglm.engine.fs import storage_error
from autoglm.engine.runtime import Runtime
from autoglm.engine.server.agent_routes import ToolHost, agent_router
from autoglm.engine.server.docs_routes import docs_management_router, docs_router
from autoglm.engine.server.guard import OLLAMA, Guard
from autoglm.engine.server.lifecycle import Lifecycle
from autoglm.engine.server.management import management_router
from autoglm.engine.server.metrics import Metrics
from autoglm.engine.server.ollama_routes import ollama_router
from autoglm.engine.server.openai_routes import openai_router
from autoglm.engine.server.pool import ModelPool
from autoglm.engine.server.protocol import error, refusal
from autoglm.engine.server.serving import OpenAIServing


def _one_model_only(name: str) -> tuple[Runtime, int]:
    raise ModelNotFoundError(f"the model '{name[:80]}' is installed, but this engine serves one model only")


def shaped(request: Request, response: JSONResponse) -> JSONResponse:
    """An error in the shape its API's clients read: OpenAI's ``{"error": {"message": ...}}``, or
    Ollama's ``{"error": "..."}`` under ``/api/`` (its client shows the string as it is)."""
    if not request.url.path.startswith(OLLAMA):
        return response
    message = json.loads(bytes(response.body))["error"]["message"]
    headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
    return JSONResponse({"error": message}, status_code=response.status_code, headers=headers)


@dataclass
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    cors_origins: list[str] = field(default_factory=list)
    retry_after_s: int = 1
    loopback_only: bool = True  # bound to loopback: Host must name loopback (DNS rebinding)
    manage_key: str | None = None  # the management API (/autoglm/*) is on only behind its own key


def create_app(runtime: Runtime, config: ServerConfig, lifecycle: Lifecycle | None = None,
               pool: ModelPool | None = None) -> FastAPI:
    """``lifecycle``: the server loop's, so a signal it receives drains these routes (see lifecycle.py).
    ``pool``: the models requests may name, ``runtime`` first (without one, only ``runtime`` serves)."""
    pool = pool or ModelPool(runtime, 0, _one_model_only, budget_bytes=1 << 62)
    tools = ToolHost()  # the MCP servers of config.toml, started when a turn first needs them

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(pool.run_sweeper())  # idle models unload on time
        try:
            yield
        finally:
            sweeper.cancel()
            await tools.close()

    app = FastAPI(title="Open-AutoGLM", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    lifecycle = lifecycle or Lifecycle()
    metrics = Metrics(runtime.scheduler, lifecycle)
    serving = OpenAIServing(pool, metrics, config.retry_after_s, lifecycle)
    # added first: inside CORS, so preflights pass
    app.add_middleware(Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes, metrics=metrics,
                       loopback_only=config.loopback_only, origins=config.cors_origins, manage_key=config.manage_key,
                       lifecycle=lifecycle)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        if first.get("type") == "json_invalid":
            return shaped(request, error(400, "the request body is not valid JSON", code="invalid_json"))
        return shaped(request, error(400, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}",
                                     param=".".join(loc) or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown routes, wrong methods, bodies the JSON parser gave up on (non-UTF-8, nested
        past its recursion limit): the same error shape as every other refusal."""
        message = {404: "no such route", 405: "method not allowed on this route",
                   400: "the request body is not valid JSON (or not UTF-8, or nested too deeply)"}.get(
            exc.status_code, str(exc.detail))
        return shaped(request, error(exc.status_code, message,
                                     code={404: "not_found", 400: "invalid_json"}.get(exc.status_code),
                                     headers=getattr(exc, "headers", None)))

    @app.exception_handler(AutoGLMError)
    async def engine_error(request: Request, exc: AutoGLMError) -> JSONResponse:
        return shaped(request, refusal(exc, config.retry_after_s))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not the client's fault: say what broke in the error shape clients read."""
        refusal = storage_error(exc) if isinstance(exc, OSError) else None
        if refusal is not None:  # the disk refused (read-only store, full disk): the user's to fix
            return await engine_error(request, refusal)
        return shaped(request, error(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error"))

    app.include_router(openai_router(serving, metrics))
    app.include_router(ollama_router(serving))
    app.include_router(management_router(runtime, lambda: set(pool.models)))
    app.include_router(agent_router(serving, tools))
    app.include_router(docs_router(serving))
    app.include_router(docs_management_router(serving))
    return app
