"""The server's guard, as plain ASGI middleware: API key, a body limit counted while the body is
read (a chunked body has no Content-Length to check), and request counting with bounded labels.

Plain ASGI because Starlette's ``@app.middleware("http")`` relays every streamed chunk through an
extra task and memory stream, which on a 2-core board is CPU taken from llama.cpp's threads.
"""

from __future__ import annotations

import hmac
from typing import Any

from engine.server.metrics import Metrics
from engine.server.protocol import error

OPEN_PATHS = {"/health"}
DRAIN_LIMIT = 16 << 20  # read (and drop) this much of a refused body, so the client sees the 413, not a reset


class Guard:
    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int, metrics: Metrics) -> None:
        self.app, self.api_key, self.max_body_bytes, self.metrics = app, api_key, max_body_bytes, metrics

    def _refusal(self, scope: dict[str, Any], headers: dict[str, str]) -> Any:
        if self.api_key and scope["path"] not in OPEN_PATHS and scope.get("method") != "OPTIONS":
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return error(401, "invalid or missing API key (Authorization: Bearer <key>)", "authentication_error",
                             code="invalid_api_key")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> Any:
        return error(413, f"request body over {self.max_body_bytes} bytes", code="body_too_large")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            self._count(scope, refusal.status_code)
            if refusal.status_code == 413:
                await _drain(receive, 0)
            return await refusal(scope, receive, send)
        state = {"read": 0, "status": 500, "refused": False}  # 500: what an exception that escapes becomes

        async def counted_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > self.max_body_bytes and not state["refused"]:
                    state["refused"] = True
                    if message.get("more_body"):
                        await _drain(receive, state["read"])
                    await self._too_large()(scope, receive, send_and_note)
                    return {"type": "http.disconnect"}  # the handler stops reading; its reply is dropped
            return message

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if state.get("started"):
                    return
                state["started"], state["status"] = True, message["status"]
            elif state["refused"] and state.get("body_sent"):
                return
            if message["type"] == "http.response.body" and state["refused"]:
                state["body_sent"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, send_and_note)
        finally:
            self._count(scope, state["status"])

    def _count(self, scope: dict[str, Any], status: int) -> None:
        route = scope.get("route")  # the route's template (``/autoglm/models/{name}``), never the raw path
        self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status)).inc()


async def _drain(receive: Any, already: int) -> None:
    """Read what is left of a request body, up to DRAIN_LIMIT in all, throwing it away."""
    while already < DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        already += len(message.get("body", b""))
        if not message.get("more_body"):
            return
