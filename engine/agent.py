"""One chat turn that may call tools of the user's MCP servers: the use case ``autoglm chat``
(``cli_agent.py``) and the desktop window (through the engine's ``/autoglm/agent`` route) share.

The turn runs rounds of reply and calls: the reply is the server's own (``server/replies.py``:
free text, then calls under their tools' grammar); each call is shown, run once the user allows it
(a server not trusted asks every time; "always" writes ``trusted = true`` to config.toml), and its
result is shown and fed back. What happens is yielded as ``Step`` items for the front end to show;
the question is asked through ``approve``, so a terminal and a window ask in their own ways.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from autoglm.engine.errors import ContextOverflowError
from autoglm.engine.mcp_tools import Outcome, Toolbox, trust
from autoglm.engine.runtime import Runtime
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.server.replies import Caller, Piece, Replier
from autoglm.engine.tasks.tools import ToolCall, ToolUse

MAX_ROUNDS = 8  # calls and results in a row before the turn hands the conversation back to the user
DECLINED = "the user declined to run this tool"

Decision = Literal["yes", "no", "always"]
Approve = Callable[[ToolCall, str], Awaitable[Decision]]


@dataclass(frozen=True)
class Step:
    """What the transcript shows, in order: reply ``text``; a ``call`` (and, for a server not
    trusted, the ``ask`` before it runs); its ``result`` (``error`` when it failed or was declined);
    a ``notice`` from the turn itself."""

    kind: Literal["text", "call", "ask", "result", "notice"]
    text: str = ""
    call: ToolCall | None = None
    server: str = ""
    error: bool = False

    def wire(self) -> dict[str, Any]:
        """The step as JSON for the route's event stream."""
        out: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.call is not None:
            out |= {"id": self.call.id, "name": self.call.name, "arguments": self.call.arguments,
                    "server": self.server, "failed": self.error}
        return out


async def turn(runtime: Runtime, box: Toolbox, params: SamplingParams, system: str | None,
               history: list[dict[str, Any]], approve: Approve, caller: Caller,
               replier: Replier) -> AsyncGenerator[Step, None]:
    """Reply to the conversation in ``history`` (OpenAI-shaped messages, extended in place with the
    assistant's messages and the tools' results). An engine error (context full, queue full) raises."""
    use = ToolUse.of(box.specs, "auto") if box.specs else None
    answered: set[tuple[str, str]] = set()  # calls already run this turn
    for _ in range(MAX_ROUNDS):
        tokens = await prompt_tokens(runtime, system, history, use, params.max_tokens)
        budget = runtime.sampling(len(tokens), params.max_tokens)
        last = Piece(done=True)
        async for piece in replier.pieces(runtime, tokens, replace(params, max_tokens=budget.max_tokens), None, use,
                                          caller, streamed=True):
            if piece.text:
                yield Step("text", piece.text)
            last = piece
        if last.error is not None:
            raise last.error
        if last.calls and all((c.name, c.arguments) in answered for c in last.calls):
            # small models call again with the result in front of them (Qwen2.5-Coder-1.5B does): the
            # repeat is dropped and the model asked to answer from what it has, tools not callable
            use = ToolUse.of(box.specs, "none")
            continue
        calls = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                 for c in last.calls]
        history.append({"role": "assistant", "content": last.said or None} | ({"tool_calls": calls} if calls else {}))
        if not last.calls:
            return
        for call in last.calls:
            answered.add((call.name, call.arguments))
            server = box.server_of(call.name)
            yield Step("call", call=call, server=server)
            allowed = box.trusted(call.name)
            if not allowed:
                yield Step("ask", call=call, server=server)
                decision = await approve(call, server)
                if decision == "always":
                    await asyncio.to_thread(trust, server)
                    box.trust(server)
                allowed = decision != "no"
            outcome = await box.call(call.name, call.arguments) if allowed else Outcome(DECLINED, True)
            yield Step("result", outcome.text, call, server, outcome.error)
            history.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": outcome.text})
    yield Step("notice", f"stopped after {MAX_ROUNDS} rounds of tool calls; say how to go on")


async def prompt_tokens(runtime: Runtime, system: str | None, history: list[dict[str, Any]], use: ToolUse | None,
                        max_tokens: int) -> list[int]:
    """The conversation as tokens; the oldest turns go when it outgrows the context (a quarter of
    it kept for the reply), the system prompt stays."""
    reserve = min(max_tokens, runtime.model.n_ctx // 4)
    while True:
        messages = ([{"role": "system", "content": system}] if system else []) + history
        tokens = await asyncio.to_thread(runtime.prompts.tokens, messages, use.listed if use else None)
        if len(tokens) <= runtime.model.n_ctx - reserve or len(history) <= 1:
            break
        del history[0]
    if len(tokens) >= runtime.model.n_ctx:
        raise ContextOverflowError(f"the conversation is {len(tokens)} tokens but the context holds "
                                   f"{runtime.model.n_ctx}; start a new chat, or use a larger --ctx")
    return tokens
