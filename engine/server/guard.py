"""The server's guard, as plain ASGI middleware: API key, a body limit counted while the body is
read (a chunked body has no Content-Length to check), request counting with bounded labels, and
the browser defences of a server on loopback.

Threat model for loopback: any web page the user visits can send requests to 127.0.0.1. Reading
the answers needs CORS (off unless ``--cors-origin``), but a "simple" cross-site POST (a form,
``text/plain``) runs without a preflight, and DNS rebinding makes a page's own origin resolve to
127.0.0.1. So on a loopback bind the Host header must name loopback (rebinding sends the page's
host name), and the management endpoints (pull, delete, roll back, convert, train) refuse a request
that carries a foreign ``Origin`` or is not JSON. The desktop app's own calls have no Origin and are
JSON. Management is off unless the server has a management key of its own (``--manage-key``; the
desktop app's private child gets a random one), so an inference client never pulls or deletes.

Plain ASGI because Starlette's ``@app.middleware("http")`` relays every streamed chunk through an
extra task and memory stream, which on a 2-core board is CPU taken from llama.cpp's threads.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from autoglm.engine.server.lifecycle import Lifecycle
from autoglm.engine.server.metrics import Metrics
from autoglm.engine.server.protocol import error

OPEN_PATHS = {"/health", "/health/live", "/health/ready"}
PROBES = OPEN_PATHS | {"/metrics"}  # answered while draining, and not counted as work in flight
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
MANAGEMENT = "/autoglm/"
OLLAMA = "/api/"
# what changes the store, under either API: behind the management key (Ollama's own server has no keys)
MANAGED = (MANAGEMENT, "/api/pull", "/api/delete", "/api/push", "/api/create", "/api/copy")
DRAIN_LIMIT = 16 << 20  # read (and drop) this much of a refused body, so the client sees the 413, not a reset
DRAIN_S = 1.0  # but no longer than this: a client that declares 50 MB and sends nothing gets its 413 now


class Guard:
    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int, metrics: Metrics,
                 loopback_only: bool = True, origins: list[str] | None = None, manage_key: str | None = None,
                 lifecycle: Lifecycle | None = None) -> None:
        self.app, self.api_key, self.max_body_bytes, self.metrics = app, api_key, max_body_bytes, metrics
        self.loopback_only, self.origins, self.manage_key = loopback_only, set(origins or []), manage_key
        self.lifecycle = lifecycle or Lifecycle()

    def _browser_refusal(self, scope: dict[str, Any], headers: dict[str, str]) -> Any:
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
        if self.loopback_only and host and name.lower() not in LOOPBACK_NAMES:
            return error(403, f"host '{host[:64]}' is not this server's name (a DNS-rebinding page?); "
                         "use 127.0.0.1 or localhost", "permission_error", code="host_not_allowed")
        if scope["path"].startswith(MANAGED) and scope.get("method") in ("POST", "DELETE", "PUT"):
            origin = headers.get("origin")
            if origin is not None and origin not in self.origins:
                return error(403, f"management requests from a web page ({origin[:64]}) are refused",
                             "permission_error", code="cross_site_refused")
            if scope["method"] == "POST" and not headers.get("content-type", "").startswith("application/json"):
                return error(415, "management requests must be JSON (Content-Type: application/json)",
                             code="json_required")
        return None

    def _refusal(self, scope: dict[str, Any], headers: dict[str, str]) -> Any:
        browser = self._browser_refusal(scope, headers)
        if browser is not None:
            return browser
        if self.lifecycle.draining and scope["path"] not in PROBES:
            return error(503, "the server is shutting down; send this request to another replica or retry "
                         "once it is back", "server_error", code="draining", headers={"Retry-After": "5"})
        management = scope["path"].startswith(MANAGED)
        if management and self.manage_key is None:
            return error(403, "the management API is off on this server (start it with --manage-key KEY)",
                         "permission_error", code="management_off")
        key = self.manage_key if management else self.api_key
        if key and scope["path"] not in OPEN_PATHS and scope.get("method") != "OPTIONS":
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), key.encode()):
                what = "management key" if management else "API key"
                return error(401, f"invalid or missing {what} (Authorization: Bearer <key>)", "authentication_error",
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

        work = scope["path"] not in PROBES
        self.lifecycle.in_flight += work  # the event loop's thread only: no lock needed
        try:
            await self.app(scope, counted_receive, send_and_note)
        finally:
            self.lifecycle.in_flight -= work
            self._count(scope, state["status"])

    def _count(self, scope: dict[str, Any], status: int) -> None:
        route = scope.get("route")  # the route's template (``/autoglm/models/{name}``), never the raw path
        self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status)).inc()


async def _drain(receive: Any, already: int) -> None:
    """Read what is left of a request body, up to DRAIN_LIMIT or DRAIN_S, throwing it away."""
    try:
        await asyncio.wait_for(_read_away(receive, already), DRAIN_S)
    except asyncio.TimeoutError:
        pass


async def _read_away(receive: Any, already: int) -> None:
    while already < DRAIN_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            return
        already += len(message.get("body", b""))
        if not message.get("more_body"):
            return
