"""The desktop window's chat with MCP tools, below the window (fast tier): the engine's
``/autoglm/agent`` route on a real socket, the window's own client (``EngineClient``), a real MCP
server over stdio (tests/mcp_server.py) and a scripted fake model that calls its tool. The asking,
declining, trusting for good and the bounds; the real model in the window is in test_gui_mcp.py."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from autoglm.app.engine_process import EngineClient, EngineError
from autoglm.engine.hardware import DeviceFacts
from autoglm.engine.runtime import Runtime, ScheduledBackend
from autoglm.engine.scheduler import Scheduler
from autoglm.engine.server.app import ServerConfig, create_app
from autoglm.engine.tasks.tools import OPEN
from tests.fakes import CharBackend, ScriptedExecutor

DATA = Path(__file__).parent / "data"
SERVER = Path(__file__).parent / "mcp_server.py"
CALL = '{"name": "weather_get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
ASK = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    log = tmp_path / "calls.log"
    path.write_text(f"[mcp.weather]\ncommand = {json.dumps([sys.executable, str(SERVER)])}\n\n[mcp.weather.env]\n"
                    f"MCP_TEST_LOG = {json.dumps(str(log))}\n", encoding="utf-8")
    monkeypatch.setenv("AUTOGLM_CONFIG", str(path))
    return path


@pytest.fixture
def engine():
    """The app under uvicorn on a loopback socket, as the window's engine child serves it."""
    scheduler = Scheduler(ScriptedExecutor(f"Let me look.{OPEN}", CALL, n_seq=2, n_batch=48), parallel=2,
                          ctx_per_seq=2048, max_queue=8).start()
    device = DeviceFacts.load(DATA / "devices" / "epyc-2core-vm.json")
    runtime = Runtime("fake-model", ScheduledBackend(CharBackend(), scheduler), device)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(create_app(runtime, ServerConfig(manage_key="mk")), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    client = EngineClient(f"http://127.0.0.1:{sock.getsockname()[1]}", "mk")
    try:
        yield client
    finally:
        server.should_exit = True
        thread.join(30)
        scheduler.close()


def _turn(client: EngineClient, decision: str | None) -> list[dict]:
    steps: list[dict] = []
    for step in client.agent_stream(ASK, temperature=0, max_tokens=200):
        if step["kind"] == "text" and steps and steps[-1]["kind"] == "text":  # one step per token: joined
            steps[-1] = {**steps[-1], "text": steps[-1]["text"] + step["text"]}
            continue
        steps.append(step)
        if step["kind"] == "ask" and decision is not None:
            client.answer(step["id"], decision)
    return steps


def test_a_tool_runs_once_allowed_is_declined_on_no_and_trusted_for_good_on_always(engine, config, tmp_path):
    log = tmp_path / "calls.log"
    offered = engine.mcp_tools()
    assert sorted((t["name"], t["trusted"]) for t in offered["tools"]) == [("weather_add", False),
                                                                            ("weather_get_weather", False)]

    declined = _turn(engine, "no")
    kinds = [s["kind"] for s in declined]
    assert kinds[:4] == ["text", "call", "ask", "result"] and declined[0]["text"] == "Let me look."
    assert declined[1]["name"] == "weather_get_weather" and json.loads(declined[1]["arguments"]) == {"city": "Oslo"}
    assert declined[3]["failed"] and "declined" in declined[3]["text"]
    assert not log.exists()  # nothing ran

    allowed = _turn(engine, "yes")
    result = next(s for s in allowed if s["kind"] == "result")
    assert result["text"] == "4 °C in Oslo now" and not result["failed"]
    assert log.read_text(encoding="utf-8").splitlines() == ["get_weather Oslo"]
    assert "trusted" not in config.read_text(encoding="utf-8")

    _turn(engine, "always")
    assert "trusted = true" in config.read_text(encoding="utf-8")
    trusted = _turn(engine, None)  # no answer given: a question now would hang the turn
    assert "ask" not in [s["kind"] for s in trusted] and any(s["kind"] == "result" for s in trusted)
    assert all(t["trusted"] for t in engine.mcp_tools()["tools"])


def test_answers_are_checked_and_a_question_ends_with_its_stream(engine, config):
    with pytest.raises(EngineError, match="no tool call"):
        engine.answer("call_nope", "yes")
    with pytest.raises(EngineError, match="decision"):
        engine.post("/autoglm/agent/answer", {"id": "call_x", "decision": "sure"})
    # a client that goes away while asked: its question is gone, the turn ended
    cancel = threading.Event()
    asked = None
    for step in engine.agent_stream(ASK, cancel=cancel, temperature=0, max_tokens=200):
        if step["kind"] == "ask":
            asked = step["id"]
            cancel.set()
    assert asked is not None
    time.sleep(1.5)  # the engine sees the connection close at once; the stream's end pops the question
    with pytest.raises(EngineError, match="no tool call"):
        engine.answer(asked, "yes")


def test_a_broken_mcp_table_is_a_one_line_error_and_read_again_once_fixed(engine, config, tmp_path):
    good = config.read_text(encoding="utf-8")
    config.write_text('[mcp.weather]\ncommand = "python"\n', encoding="utf-8")
    with pytest.raises(EngineError, match="list of strings"):
        engine.mcp_tools()
    with pytest.raises(EngineError, match="list of strings"):
        list(engine.agent_stream(ASK, max_tokens=20))
    config.write_text(good, encoding="utf-8")
    assert len(engine.mcp_tools()["tools"]) == 2
