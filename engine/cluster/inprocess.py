"""An ASGI app called in-process, one request at a time, its response as a stream of parts: how a
Ray Serve replica hands a request to the engine's own server app (every route, error shape and
bound of ``autoglm serve``) without a socket of its own.

Closing the stream is the client going away: the app's next ``receive`` says ``http.disconnect``,
which cancels the generation as it would for a closed connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

Part = dict[str, Any] | bytes  # the first part: {"status", "headers"}; then the body's chunks


class InProcess:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._lifespan: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def start(self) -> None:
        """Run the app's lifespan startup (its background tasks: idle unload, MCP tools)."""
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def send(message: dict[str, Any]) -> None:
            if message["type"].startswith("lifespan.startup") and not started.done():
                if message["type"].endswith("failed"):
                    started.set_exception(RuntimeError(message.get("message", "startup failed")))
                else:
                    started.set_result(None)

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._lifespan = asyncio.create_task(self.app(scope, self._events.get, send))
        await self._events.put({"type": "lifespan.startup"})
        await started

    async def stop(self) -> None:
        if self._lifespan is not None:
            await self._events.put({"type": "lifespan.shutdown"})
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._lifespan, 15)

    async def request(self, method: str, path: str, query: str, headers: list[tuple[str, str]],
                      body: bytes) -> AsyncGenerator[Part, None]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "root_path": "", "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80),
                 "headers": [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode()) for k, v in headers
                                                          if k.lower() != "host"]}
        parts: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        gone = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await parts.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                parts.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            while (message := await parts.get()) is not None:
                if message["type"] == "http.response.start":
                    yield {"status": message["status"],
                           "headers": [(k.decode(), v.decode()) for k, v in message.get("headers", [])]}
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield bytes(message["body"])
                    if not message.get("more_body"):
                        return
        finally:
            gone.set()  # the client went away (or the response ended): the app winds down
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
