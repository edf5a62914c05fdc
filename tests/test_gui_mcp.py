"""MCP tools in the desktop window (offscreen) with a real engine child on Qwen2.5-Coder-1.5B and a
real MCP server over stdio (tests/mcp_server.py): the window asks before a tool runs, "Don't run"
runs nothing, "Always" runs it and trusts the server for good, each call and result shows in the
transcript as a Tool turn and is kept with the conversation."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from autoglm.app.views.chat import history  # noqa: E402
from tests.conftest import open_window  # noqa: E402

SERVER = Path(__file__).parent / "mcp_server.py"
QUESTION = "What is the temperature in Oslo?"


@pytest.fixture
def mcp_window(qtbot, qwen_15b, tmp_path, monkeypatch):
    from autoglm.app.engine_process import EngineOptions

    config = tmp_path / "config.toml"
    config.write_text(f"[mcp.weather]\ncommand = {json.dumps([sys.executable, str(SERVER)])}\n\n[mcp.weather.env]\n"
                      f"MCP_TEST_LOG = {json.dumps(str(tmp_path / 'calls.log'))}\n", encoding="utf-8")
    monkeypatch.setenv("AUTOGLM_CONFIG", str(config))  # the engine child reads it
    yield from open_window(qtbot, tmp_path, monkeypatch, EngineOptions(model="qwen2.5-coder-1.5b", parallel=1))


def _ask(qtbot, win, text: str) -> None:
    win.chat.temperature.setValue(0.0)
    win.chat.input.setPlainText(text)
    win.chat.send_btn.click()


@pytest.mark.slow
def test_the_window_asks_before_an_mcp_tool_runs_and_shows_the_call_and_result(qtbot, mcp_window, tmp_path):
    chat, log = mcp_window.chat, tmp_path / "calls.log"
    mcp_window.tabs.setCurrentWidget(chat)  # where the user asks from: the question shows there
    qtbot.waitUntil(lambda: bool(chat.tools), timeout=60_000)
    assert {t["name"] for t in chat.tools} == {"weather_get_weather", "weather_add"}

    with qtbot.waitSignal(chat.reply_finished, timeout=300_000):
        _ask(qtbot, mcp_window, QUESTION)
        qtbot.waitUntil(chat.ask_bar.isVisible, timeout=300_000)
        assert "weather_get_weather" in chat.ask_label.text() and "weather" in chat.ask_label.text()
        chat.deny_btn.click()
    shown = chat.transcript.toPlainText()
    assert "Tool" in shown and "weather_get_weather" in shown and "declined" in shown, shown
    assert not log.exists()  # nothing ran

    chat.new_conversation()  # in the same chat the model would only repeat that it could not answer
    with qtbot.waitSignal(chat.reply_finished, timeout=300_000):
        _ask(qtbot, mcp_window, QUESTION)
        qtbot.waitUntil(chat.ask_bar.isVisible, timeout=300_000)
        chat.always_btn.click()
    assert "4 °C in Oslo now" in chat.transcript.toPlainText()
    assert log.read_text(encoding="utf-8").splitlines()[0] == "get_weather Oslo"
    assert "trusted = true" in (tmp_path / "config.toml").read_text(encoding="utf-8")
    roles = [m.role for m in mcp_window.store.messages(chat.conversation_id)]
    assert roles == ["user", "tool", "assistant"]  # the call and its result kept with the conversation

    asked: list[dict] = []
    on_step = chat._on_step  # trusted now: the window must not ask again

    def watched(reply, step):
        if step["kind"] == "ask":
            asked.append(step)
        on_step(reply, step)

    chat._on_step = watched
    tool_turn = next(m for m in mcp_window.store.messages(chat.conversation_id) if m.role == "tool")
    replayed = history(mcp_window.store.messages(chat.conversation_id))  # what a later turn sends
    assert replayed[1]["tool_calls"][0]["function"]["name"] == "weather_get_weather"
    assert replayed[2] == {"role": "tool", "tool_call_id": json.loads(tool_turn.data)["id"],
                           "name": "weather_get_weather", "content": "4 °C in Oslo now"}
    chat.new_conversation()  # (in the same chat the 1.5B makes up Rome's temperature instead of calling)
    with qtbot.waitSignal(chat.reply_finished, timeout=300_000):
        _ask(qtbot, mcp_window, "What is the temperature in Rome?")
    assert not asked and "19 °C in Rome now" in chat.transcript.toPlainText()
