"""A real MCP server for the tests (the ``mcp`` package's own server): two tools, over stdio, or
over streamable HTTP with ``--http PORT``. Each call is appended to the file named by
``MCP_TEST_LOG`` (if set), so a test can tell whether a tool really ran."""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("autoglm-test-tools")


def _log(line: str) -> None:
    if path := os.environ.get("MCP_TEST_LOG"):
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


@server.tool()
def get_weather(city: str) -> str:
    """Current temperature in a city, in Celsius."""
    _log(f"get_weather {city}")
    return f"{ {'Oslo': 4, 'Rome': 19}.get(city, 10)} °C in {city} now"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    _log(f"add {a} {b}")
    return a + b


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
