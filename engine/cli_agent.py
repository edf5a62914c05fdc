"""``autoglm chat`` with tools from the MCP servers in config.toml (``engine/mcp_tools.py``).

The reply is the server's own use case (``engine/server/replies.py``: free text, then calls under
their tools' grammar), run here on the terminal's event loop, so the CLI and the server call
tools the same way. Each call is shown with its result; a tool of a server that is not trusted
runs only after the user says yes (``a``: always, written to config.toml as ``trusted = true``).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from typing import Any

from autoglm.engine.errors import AutoGLMError, ContextOverflowError
from autoglm.engine.mcp_tools import McpServer, Outcome, Toolbox, trust
from autoglm.engine.runtime import Runtime
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.server.lifecycle import Lifecycle
from autoglm.engine.server.replies import Piece, Replier
from autoglm.engine.tasks.tools import ToolUse

MAX_ROUNDS = 8  # calls and results in a row before the chat hands the turn back to the user
SHOWN_CHARS = 400  # of a result in the transcript (the model gets it all, up to mcp_tools' bound)


class _Terminal:
    """The caller of a terminal chat: it never disconnects (Ctrl-C ends the chat instead)."""

    async def is_disconnected(self) -> bool:
        return False


def agent_chat(runtime: Runtime, servers: list[McpServer], params: SamplingParams, system: str | None) -> int:
    return asyncio.run(_chat(runtime, servers, params, system))


async def _ask(prompt: str) -> str | None:
    try:
        return await asyncio.to_thread(input, prompt)
    except EOFError:
        return None


async def _chat(runtime: Runtime, servers: list[McpServer], params: SamplingParams, system: str | None) -> int:
    async with Toolbox(servers) as box:
        for problem in box.problems:
            print(f"autoglm: warning: {problem}", file=sys.stderr)
        print(f"chatting with {runtime.model_name}; tools: {', '.join(box.offered) or 'none'}; /reset, /quit",
              file=sys.stderr)
        history: list[dict[str, Any]] = []
        while (line := await _ask("> ")) is not None:
            text = line.strip()
            if text in ("/quit", "/exit"):
                break
            if text == "/reset":
                history.clear()
                print("(conversation cleared)", file=sys.stderr)
            elif text:
                history.append({"role": "user", "content": text})
                try:
                    await _turn(runtime, box, params, system, history)
                except AutoGLMError as exc:
                    print(f"autoglm: error: {exc}", file=sys.stderr)
    return 0


async def _turn(runtime: Runtime, box: Toolbox, params: SamplingParams, system: str | None,
                history: list[dict[str, Any]]) -> None:
    replier = Replier(None, Lifecycle())
    use = ToolUse.of(box.specs, "auto") if box.specs else None
    answered: set[tuple[str, str]] = set()  # calls already run this turn
    for _ in range(MAX_ROUNDS):
        tokens = await _prompt(runtime, system, history, use, params.max_tokens)
        budget = runtime.sampling(len(tokens), params.max_tokens)
        last, spoke = Piece(done=True), False
        async for piece in replier.pieces(runtime, tokens, replace(params, max_tokens=budget.max_tokens), None, use,
                                          _Terminal(), streamed=True):
            print(piece.text, end="", flush=True)
            last, spoke = piece, spoke or bool(piece.text)
        if spoke:
            print()
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
            print(f"[tool call] {call.name} {call.arguments} (MCP server {server})")
            outcome = await _run(box, call.name, call.arguments, server)
            shown = outcome.text if len(outcome.text) <= SHOWN_CHARS else outcome.text[:SHOWN_CHARS] + " ..."
            print(f"[tool {'error' if outcome.error else 'result'}] {shown}")
            history.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": outcome.text})
    print(f"(stopped after {MAX_ROUNDS} rounds of tool calls; say how to go on)", file=sys.stderr)


async def _run(box: Toolbox, name: str, arguments: str, server: str) -> Outcome:
    if not box.trusted(name):
        answer = (await _ask(f"run {name} on {server}? [y]es, [n]o, [a]lways for {server}: ") or "n").strip().lower()
        if answer.startswith("a"):
            await asyncio.to_thread(trust, server)
            box.trust(server)
        elif not answer.startswith("y"):
            return Outcome("the user declined to run this tool", True)
    return await box.call(name, arguments)


async def _prompt(runtime: Runtime, system: str | None, history: list[dict[str, Any]], use: ToolUse | None,
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
                                   f"{runtime.model.n_ctx}; /reset, or use a larger --ctx")
    return tokens
