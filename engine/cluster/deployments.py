"""The Ray Serve deployments of ``autoglm cluster serve``: replicas that each run the engine (the
server app of ``autoglm serve``, called in-process), and a gateway, the one OpenAI-compatible
endpoint, that checks the key, bounds the body and hands each request to a replica through the
prefix-affinity router, streaming the reply back.

A replica that dies mid-reply ends that stream with an error event (never a hang); Ray Serve
restarts it, and the routers learn the new set of replicas on their own.
"""

# no ``from __future__ import annotations``: Ray Serve's ingress rebuilds the routes, and FastAPI must
# see the real Request class in their signatures, not the string "Request"
import asyncio
import hmac
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from autoglm.engine.cluster.inprocess import InProcess, Part
from autoglm.engine.cluster.routing import affinity_key
from autoglm.engine.server.app import ServerConfig, create_app
from autoglm.engine.server.guard import OPEN_PATHS
from autoglm.engine.server.lifecycle import Lifecycle
from autoglm.engine.server.serve import ServeSettings, load_engine

REPLICA_HEADER = "x-autoglm-replica"  # which replica answered: for operators, and the tests of routing
PASSED_HEADERS = {"content-type", "accept"}


class EngineReplica:
    """One engine per replica; its ``forward`` yields the response's head, then its body's chunks."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServeSettings(**settings)
        self.engine = load_engine(self.settings)
        self.id = serve.get_replica_context().replica_id.unique_id
        # the gateway checked the key and the body's size; inside the cluster the app needs neither
        config = ServerConfig(max_body_bytes=self.settings.max_body_bytes, loopback_only=False)
        self.app = InProcess(create_app(self.engine.runtime, config, Lifecycle(self.settings.grace),
                                        self.engine.pool))
        self._started: asyncio.Task[None] | None = None

    async def forward(self, key: str | None, method: str, path: str, query: str, headers: list[tuple[str, str]],
                      body: bytes) -> AsyncGenerator[Part, None]:
        """``key`` is the conversation (``routing.affinity_key``): read by the router, not here."""
        if self._started is None:  # the app's lifespan runs on this replica's event loop
            self._started = asyncio.create_task(self.app.start())
        await asyncio.shield(self._started)
        async for part in self.app.request(method, path, query, headers, body):
            if isinstance(part, dict):
                part["headers"].append((REPLICA_HEADER, self.id))
            yield part

    def check_health(self) -> None:
        """Ray Serve asks every few seconds; a failed scheduler step makes it replace this replica."""
        if self.engine.runtime.scheduler.failed:
            raise RuntimeError("the engine's scheduler failed; this replica needs a restart")

    def stats(self) -> dict[str, Any]:
        return {"replica": self.id, **self.engine.runtime.scheduler.stats}


gateway = FastAPI(title="Open-AutoGLM cluster", docs_url=None, redoc_url=None, openapi_url=None)


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


async def _relay(parts: AsyncIterator[Part], streamed: bool) -> AsyncIterator[bytes]:
    try:
        async for part in parts:
            if isinstance(part, bytes):
                yield part
    except Exception as exc:  # noqa: BLE001 - the replica died mid-reply: the client hears why, then the end
        if streamed:
            message = f"the replica serving this reply stopped ({type(exc).__name__}); ask again"
            error = {"error": {"message": message, "type": "server_error", "param": None, "code": "replica_failed"}}
            yield f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()


# (defined before the class: ``serve.ingress`` takes the routes, and what they name, as it decorates)
@serve.ingress(gateway)
class Gateway:
    def __init__(self, engine: DeploymentHandle, api_key: str | None, max_body_bytes: int) -> None:
        self.engine = engine.options(stream=True)
        self.api_key, self.max_body_bytes = api_key, max_body_bytes

    @gateway.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "DELETE"])
    async def forward(self, path: str, request: Request) -> Response:
        path = "/" + path
        if self.api_key and path not in OPEN_PATHS:
            auth = request.headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return _error(401, "invalid or missing API key (Authorization: Bearer <key>)", "invalid_api_key",
                              "authentication_error")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                return _error(413, f"request body over {self.max_body_bytes} bytes", "body_too_large")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() in PASSED_HEADERS]
        key = affinity_key(bytes(body)) if request.method == "POST" else None
        parts: Any = self.engine.forward.remote(key, request.method, path, request.url.query, headers, bytes(body))
        try:
            head = await parts.__anext__()
        except BackPressureError:  # every replica full and the queue too: the client retries shortly
            return JSONResponse({"error": {"message": "the cluster is at capacity; retry shortly", "type":
                                           "server_error", "param": None, "code": "queue_full"}},
                                status_code=429, headers={"Retry-After": "1"})
        except Exception as exc:  # noqa: BLE001 - no replica could take it (all gone, cluster stopping)
            return _error(503, f"no replica could answer: {type(exc).__name__}: {str(exc)[:200]}", "no_replica",
                          "server_error")
        assert isinstance(head, dict)
        kept = {k: v for k, v in head["headers"] if k.lower() not in ("content-length", "transfer-encoding")}
        streamed = kept.get("content-type", "").startswith("text/event-stream")
        return StreamingResponse(_relay(parts, streamed), status_code=head["status"], headers=kept)
