"""Tools from MCP servers the user lists in ``config.toml``, for a chat that may call them::

    [mcp.weather]
    command = ["python", "weather_server.py"]   # a stdio server, started for the chat
    env = { API_KEY = "..." }
    trusted = true                               # run its tools without asking

    [mcp.search]
    url = "http://127.0.0.1:9000/mcp"           # a streamable-HTTP server

The ``mcp`` package's client does the protocol; this module turns the servers' tools into
OpenAI-shaped tools (named ``server_tool``, the 64-character rule kept) and their results into
bounded text. A server that cannot be reached is reported in one line and left out; a tool's
result is material for the model, never an instruction, and is cut at MAX_RESULT_CHARS.
"""

from __future__ import annotations

import json
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from autoglm.engine.errors import InvalidArgumentError, first_line
from autoglm.engine.router import config, config_path, write_config

MAX_RESULT_CHARS = 32 << 10  # about 8k tokens: a web page's worth; more would crowd out the conversation
CALL_TIMEOUT_S = 60.0
MAX_TOOLS = 128  # as a request may offer (tasks/tools.py)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class McpServer:
    name: str
    command: list[str] = field(default_factory=list)  # stdio
    url: str | None = None  # streamable HTTP
    env: dict[str, str] = field(default_factory=dict)
    trusted: bool = False


def configured() -> list[McpServer]:
    """The ``[mcp.NAME]`` tables of config.toml, checked: a mistake is one line naming the file."""
    tables = config().get("mcp", {})
    where = config_path()
    if not isinstance(tables, dict):
        raise InvalidArgumentError(f"{where}: [mcp] must hold one table per server ([mcp.NAME])")
    servers = []
    for name, spec in tables.items():
        if not isinstance(spec, dict):
            raise InvalidArgumentError(f"{where}: mcp.{name} must be a table with command = [...] or url = \"...\"")
        command, url, env = spec.get("command"), spec.get("url"), spec.get("env", {})
        if (command is None) == (url is None):
            raise InvalidArgumentError(f"{where}: mcp.{name} needs either command = [\"program\", \"arg\", ...] "
                                       "or url = \"http://...\"")
        if command is not None and (not isinstance(command, list) or not command
                                    or not all(isinstance(c, str) and c for c in command)):
            raise InvalidArgumentError(f"{where}: mcp.{name}.command must be a list of strings")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise InvalidArgumentError(f"{where}: mcp.{name}.url must be an http:// or https:// address")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise InvalidArgumentError(f"{where}: mcp.{name}.env must be a table of strings")
        servers.append(McpServer(name, list(command or []), url, dict(env), bool(spec.get("trusted", False))))
    return servers


def trust(server: str) -> None:
    """Run this server's tools without asking from now on (``trusted = true`` in config.toml)."""
    data = config()
    table = data.get("mcp", {}).get(server)
    if not isinstance(table, dict):
        raise InvalidArgumentError(f"{config_path()} has no MCP server {server!r}")
    table["trusted"] = True
    write_config(data)


@dataclass(frozen=True)
class Offered:
    server: McpServer
    tool: str  # the server's own name for it
    spec: dict[str, Any]  # OpenAI's shape, under our name


@dataclass(frozen=True)
class Outcome:
    text: str
    error: bool


class Toolbox:
    """The configured servers' tools for one chat: ``async with Toolbox(servers) as box``; its
    clients live in the task that entered it (the ``mcp`` client's rule)."""

    def __init__(self, servers: list[McpServer]) -> None:
        self.servers = servers
        self.offered: dict[str, Offered] = {}
        self.problems: list[str] = []  # servers left out, one line each
        self._clients: dict[str, Any] = {}
        self._trusted_now: set[str] = set()
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Toolbox:
        if not self.servers:
            return self  # no servers, no tools: the mcp package is not needed
        try:
            from mcp import Client
            from mcp.client.stdio import StdioServerParameters
        except ImportError:
            raise InvalidArgumentError(f"{config_path()} lists MCP servers, but the mcp package is not installed: "
                                       "pip install 'open-autoglm[mcp]' (or chat --no-tools)") from None

        for server in self.servers:
            target: Any = server.url or StdioServerParameters(command=server.command[0], args=server.command[1:],
                                                              env=server.env or None)
            try:  # no wait_for: the client's task group must be entered and left in this task
                client = await self._stack.enter_async_context(Client(target, read_timeout_seconds=CALL_TIMEOUT_S))
                listed = await client.list_tools()
            except Exception as exc:  # noqa: BLE001 - a foreign server: any failure leaves it out, said once
                self.problems.append(f"MCP server {server.name} left out: {type(exc).__name__}: {first_line(exc, 200)}")
                continue
            self._clients[server.name] = client
            for tool in listed.tools:
                name = _UNSAFE.sub("_", f"{server.name}_{tool.name}")[:64]
                if name in self.offered or len(self.offered) >= MAX_TOOLS:
                    continue
                schema = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None) or {}
                self.offered[name] = Offered(server, tool.name, {"type": "function", "function": {
                    "name": name, "description": (tool.description or "")[:4096], "parameters": schema}})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def specs(self) -> list[dict[str, Any]]:
        return [o.spec for o in self.offered.values()]

    def trusted(self, name: str) -> bool:
        return name in self.offered and (self.offered[name].server.trusted
                                         or self.offered[name].server.name in self._trusted_now)

    def trust(self, server: str) -> None:
        """Trusted for the rest of this chat (``mcp_tools.trust`` writes it down for later ones)."""
        self._trusted_now.add(server)

    def server_of(self, name: str) -> str:
        return self.offered[name].server.name if name in self.offered else "?"

    async def call(self, name: str, arguments: str) -> Outcome:
        """Run the tool; its result as text for the model (errors too: the model may recover)."""
        offered = self.offered.get(name)
        if offered is None:
            return Outcome(f"there is no tool named {name}", True)
        try:
            args = json.loads(arguments or "{}")
            result = await self._clients[offered.server.name].call_tool(offered.tool, args)  # times out itself
        except Exception as exc:  # noqa: BLE001 - the server's failure is the model's to read, not a crash
            return Outcome(f"{name} failed: {type(exc).__name__}: {first_line(exc, 200)}", True)
        parts = [getattr(c, "text", None) or json.dumps(c.model_dump(mode="json"))[:1024] for c in result.content]
        text = "\n".join(parts)
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + f"\n[... cut: the result was {len(text)} characters]"
        return Outcome(text, bool(getattr(result, "is_error", False)))

