"""``autoglm chat`` with tools from the MCP servers in config.toml: the terminal's side of the
turn in ``engine/agent.py``, run on the terminal's event loop. Each call is printed with its
result; a tool of a server that is not trusted runs only after the user says yes (``a``: always).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from autoglm.engine.agent import Decision, Step, turn
from autoglm.engine.errors import AutoGLMError
from autoglm.engine.mcp_tools import McpServer, Toolbox
from autoglm.engine.runtime import Runtime
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.server.lifecycle import Lifecycle
from autoglm.engine.server.replies import Replier
from autoglm.engine.tasks.tools import ToolCall

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


async def _approve(call: ToolCall, server: str) -> Decision:
    answer = (await _ask(f"run {call.name} on {server}? [y]es, [n]o, [a]lways for {server}: ") or "n").strip().lower()
    return "always" if answer.startswith("a") else "yes" if answer.startswith("y") else "no"


def _show(step: Step, spoke: bool) -> bool:
    """Print one step; returns whether reply text is on the current line."""
    if step.kind == "text":
        print(step.text, end="", flush=True)
        return True
    if spoke:
        print()
    if step.kind == "call" and step.call is not None:
        print(f"[tool call] {step.call.name} {step.call.arguments} (MCP server {step.server})")
    elif step.kind == "result":
        shown = step.text if len(step.text) <= SHOWN_CHARS else step.text[:SHOWN_CHARS] + " ..."
        print(f"[tool {'error' if step.error else 'result'}] {shown}")
    elif step.kind == "notice":
        print(f"({step.text})", file=sys.stderr)
    return False  # "ask": _approve prompts


async def _chat(runtime: Runtime, servers: list[McpServer], params: SamplingParams, system: str | None) -> int:
    replier = Replier(None, Lifecycle())
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
                spoke = False
                try:
                    async for step in turn(runtime, box, params, system, history, _approve, _Terminal(), replier):
                        spoke = _show(step, spoke)
                except AutoGLMError as exc:
                    print(f"autoglm: error: {exc}", file=sys.stderr)
                if spoke:
                    print()
    return 0
