"""The desktop window's chat with MCP tools (``engine/agent.py``'s turn, over HTTP). Management
routes: behind the manage key, since they run programs the user configured.

- ``GET /autoglm/mcp``: the tools on offer, whether each server is trusted, servers left out.
- ``POST /autoglm/agent``: one turn as SSE, one ``Step`` per event (text, call, ask, result,
  notice), then ``{"kind": "done"}`` or an error event. An ``ask`` waits for
- ``POST /autoglm/agent/answer`` ``{"id": <the call's id>, "decision": "yes"|"no"|"always"}``; a
  client that goes away (or does not answer within ASK_TIMEOUT_S) counts as "no".

The MCP servers' clients live as long as the engine (``ToolHost``), so a stdio server is started
once, not at every turn; config.toml is read when the first turn needs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from autoglm.engine.agent import Decision, turn
from autoglm.engine.errors import AutoGLMError, InvalidArgumentError
from autoglm.engine.mcp_tools import McpServer, Toolbox, configured
from autoglm.engine.server.protocol import Message, Sampling, error, sse_error, sse_refusal
from autoglm.engine.server.serving import OpenAIServing
from autoglm.engine.tasks.tools import ToolCall

ASK_TIMEOUT_S = 600.0  # a question nobody answers is a "no", not a turn held open for ever
MAX_ASKS = 64  # questions waiting at once, over all turns


class AgentRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class Answer(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    decision: Literal["yes", "no", "always"]


class ToolHost:
    """The configured MCP servers' clients for the engine's life. They are entered in a task of
    their own and left in it (the ``mcp`` client's rule); a config that fails (a typo, ``mcp`` not
    installed) is reported to the turn that asked and read again by the next one."""

    def __init__(self, servers: Callable[[], list[McpServer]] = configured) -> None:
        self._servers = servers
        self._ready: asyncio.Future[Toolbox] | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def box(self) -> Toolbox:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._host(self._ready))
        return await asyncio.shield(self._ready)

    async def _host(self, ready: asyncio.Future[Toolbox]) -> None:
        try:
            servers = await asyncio.to_thread(self._servers)
            async with Toolbox(servers) as box:
                ready.set_result(box)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                self._ready = None  # the next turn tries again (the user may have fixed config.toml)
                ready.set_exception(exc if isinstance(exc, AutoGLMError) else InvalidArgumentError(
                    f"the MCP servers could not be started: {type(exc).__name__}: {exc}"))
            elif not isinstance(exc, asyncio.CancelledError):
                raise

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)
        self._ready, self._task, self._stop = None, None, asyncio.Event()  # an app started again starts afresh


def agent_router(serving: OpenAIServing, host: ToolHost) -> APIRouter:
    router = APIRouter(prefix="/autoglm")
    asks: dict[str, asyncio.Future[Decision]] = {}

    @router.get("/mcp")
    async def tools() -> dict[str, Any]:
        box = await host.box()
        return {"tools": [{"name": name, "server": o.server.name, "description": o.spec["function"]["description"],
                           "trusted": box.trusted(name)} for name, o in box.offered.items()],
                "problems": box.problems}

    @router.post("/agent/answer")
    async def answer(body: Answer) -> Any:
        waiting = asks.get(body.id)
        if waiting is None or waiting.done():
            return error(404, f"no tool call {body.id!r} is waiting for an answer")
        waiting.set_result(body.decision)
        return {"id": body.id, "decision": body.decision}

    @router.post("/agent")
    async def agent(body: AgentRequest, request: Request) -> Any:
        box = await host.box()  # a broken config is this request's error status, before the stream
        messages = [m.plain() for m in body.messages]
        system = messages.pop(0)["content"] if messages[0]["role"] == "system" else None
        if not messages:
            return error(400, "messages: give at least one message after the system prompt")

        async def approve(call: ToolCall, _server: str) -> Decision:
            try:
                return await asyncio.wait_for(asyncio.shield(asks[call.id]), ASK_TIMEOUT_S)
            except TimeoutError:
                return "no"

        async def events() -> AsyncIterator[str]:
            mine: list[str] = []
            try:  # leased inside the stream: its end (or the client's going) always gives the model back
                entry = await serving.pool.acquire(body.model, None)
            except AutoGLMError as exc:
                yield sse_refusal(exc)
                return
            try:
                runtime = entry.runtime
                params = runtime.sampling(0, body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                                          seed=body.seed, stop=body.stop_list())
                async for step in turn(runtime, box, params, system, messages, approve, request, serving.replier):
                    if step.kind == "ask" and step.call is not None:
                        if len(asks) >= MAX_ASKS:
                            yield sse_error(f"{MAX_ASKS} tool calls are already waiting for an answer", code="busy")
                            return
                        asks[step.call.id] = asyncio.get_running_loop().create_future()  # before the client hears
                        mine.append(step.call.id)
                    yield "data: " + json.dumps(step.wire()) + "\n\n"
                yield 'data: {"kind": "done"}\n\n'
            except AutoGLMError as exc:
                yield sse_refusal(exc)
            finally:
                for key in mine:
                    asks.pop(key, None)
                await serving.pool.release(entry)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router

