"""Tool calling (fast tier): the definitions' checks, the calls' grammar (compiled by llama.cpp's
own parser), parsing, the prompt for templates without tools, and the server's two phases over
a scripted fake model, streamed and not. The real model's agent loop is in test_tools_real.py."""

from __future__ import annotations

import json

import pytest

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.tasks.tools import (
    CLOSE,
    OPEN,
    ToolUse,
    call_grammar,
    parse_calls,
    template_messages,
    tools_from,
)
from tests.fakes import CharBackend, ScriptedExecutor
from tests.test_server_fast import make_client

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                  "required": ["a", "b"]}}}


@pytest.mark.parametrize(("tools", "says"), [
    ([WEATHER] * 10_000, "at most 128 tools"),
    ([{"type": "function", "function": {"name": "../etc/passwd"}}], "letters, digits"),
    ([WEATHER, WEATHER], "given twice"),
    ([{"type": "retrieval"}], "must be"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "array", "minItems": 10**9}}}}}], "out of range"),
])
def test_bad_tool_definitions_are_one_line_errors(tools, says):
    with pytest.raises(InvalidArgumentError, match=says):
        ToolUse.of(tools, "auto")


def test_the_calls_grammar_compiles_in_llama_cpp():
    from autoglm.engine.backends.llama_lib import llama_cpp

    for tools, parallel in (([WEATHER], False), ([WEATHER, ADD], True)):
        grammar = call_grammar(tools_from(tools), parallel)
        assert grammar.startswith("root ::=") and "call ::=" in grammar
        llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)  # raises on a grammar it cannot parse


def test_tool_choice_picks_what_may_and_must_be_called():
    assert ToolUse.of(None, None) is None
    auto = ToolUse.of([WEATHER, ADD], "auto")
    assert auto and auto.grammar and not auto.required and auto.stops() == [OPEN]
    named = ToolUse.of([WEATHER, ADD], {"type": "function", "function": {"name": "add"}})
    assert named and named.required and '"\\"add\\""' in (named.grammar or "") and "get_weather" not in named.grammar
    none = ToolUse.of([WEATHER], "none")
    assert none and none.grammar is None and none.listed == []
    with pytest.raises(InvalidArgumentError, match="not in tools"):
        ToolUse.of([WEATHER], {"type": "function", "function": {"name": "rm"}})
    with pytest.raises(InvalidArgumentError, match="needs tools"):
        ToolUse.of([], "required")


def test_calls_are_parsed_and_what_does_not_parse_stays_text():
    tools = tools_from([WEATHER, ADD])
    text = (f'Checking.\n{OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Oslo"}}}}\n{CLOSE}\n'
            f'{OPEN}\n{{"name": "add", "arguments": "{{\\"a\\": 1, \\"b\\": 2}}"}}\n{CLOSE}')
    content, calls = parse_calls(text, tools)
    assert content == "Checking."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"}),
                                                                   ("add", {"a": 1, "b": 2})]
    assert len({c.id for c in calls}) == 2
    whole = f'{OPEN}\n{{"name": "add", "arguments": {{"a": 1, "b": 2}}}}\n{CLOSE}'
    cut = parse_calls(f'{whole}\n{OPEN}\n{{"name": "ad', tools)
    assert cut[0] == "" and len(cut[1]) == 1  # a second call cut short by max_tokens is dropped, not shown
    for broken in (f'{OPEN}\n{{"name": "rm", "arguments": {{}}}}\n{CLOSE}', f"{OPEN}\nnot json\n{CLOSE}", "plain"):
        assert parse_calls(broken, tools) == (broken, [])


def test_a_template_without_tools_gets_them_in_the_system_message_and_results_as_a_user_turn():
    def call(n: str, city: str) -> dict:
        args = json.dumps({"city": city})
        return {"id": n, "type": "function", "function": {"name": "get_weather", "arguments": args}}

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo and Rome?"},
                {"role": "assistant", "content": None, "tool_calls": [call("1", "Oslo"), call("2", "Rome")]},
                {"role": "tool", "tool_call_id": "1", "content": "4 C"},
                {"role": "tool", "tool_call_id": "2", "content": "19 C"}]
    out = template_messages(messages, tools_from([WEATHER]), native=False)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]  # roles alternate
    assert out[0]["content"].startswith("Be brief.") and '"get_weather"' in out[0]["content"]
    assert out[2]["content"].count(OPEN) == 2 and '"arguments": {"city": "Rome"}' in out[2]["content"]
    assert "4 C" in out[3]["content"] and "19 C" in out[3]["content"]
    native = template_messages(messages, tools_from([WEATHER]), native=True)
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}  # an object, for tojson


CALL = '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def _client(free: str, calls: str = CALL):
    client, scheduler, _ = make_client(ScriptedExecutor(free, calls, n_seq=2, n_batch=48), backend=CharBackend(),
                                       ctx_per_seq=2048)
    return client, scheduler


def test_the_server_answers_a_call_in_openai_shape():
    client, scheduler = _client(f"Let me look.{OPEN}")
    try:
        body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [WEATHER, ADD],
                "temperature": 0, "max_tokens": 100}
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] == "Let me look."
        call = choice["message"]["tool_calls"][0]
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
        plain = client.post("/v1/chat/completions", json={**body, "tool_choice": "none"}).json()["choices"][0]
        assert plain["finish_reason"] == "stop" and "tool_calls" not in plain["message"]
    finally:
        scheduler.close()


def _streamed(client) -> tuple[list[dict], list[dict]]:
    """A streamed tool request's SSE chunks and their deltas."""
    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [WEATHER], "stream": True,
            "temperature": 0, "max_tokens": 100}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    return lines, [line["choices"][0]["delta"] for line in lines]


def test_a_streamed_reply_sends_text_then_the_calls():
    client, scheduler = _client(f"Looking.{OPEN}")
    try:
        lines, deltas = _streamed(client)
        assert "".join(d.get("content") or "" for d in deltas) == "Looking."
        calls = [c for d in deltas for c in d.get("tool_calls", [])]
        assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "get_weather")]
        assert lines[-1]["choices"][0]["finish_reason"] == "tool_calls"
    finally:
        scheduler.close()


def test_required_calls_at_once_and_an_answer_without_a_call_is_plain_text():
    client, scheduler = _client("It is sunny.")
    try:
        body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": [WEATHER],
                "temperature": 0, "max_tokens": 100}
        answered = client.post("/v1/chat/completions", json=body).json()["choices"][0]
        assert answered["message"]["content"] == "It is sunny." and answered["finish_reason"] == "stop"
        forced = client.post("/v1/chat/completions", json={**body, "tool_choice": "required"}).json()["choices"][0]
        assert forced["finish_reason"] == "tool_calls" and forced["message"]["content"] is None
    finally:
        scheduler.close()


def test_hostile_tool_requests_are_400s_not_500s():
    client, scheduler = _client("x")
    try:
        base = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        tiny = {"type": "function", "function": {"name": "f"}}
        for extra in ({"tools": [tiny] * 10_000}, {"tools": [{"type": "function", "function": {"name": "../x"}}]},
                      {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                      {"tool_choice": "required"},
                      {"tools": [WEATHER], "response_format": {"type": "json_object"}}):
            r = client.post("/v1/chat/completions", json={**base, **extra})
            assert r.status_code == 400, (extra.keys(), r.text)
            assert r.json()["error"]["message"]
        result = {"role": "tool", "tool_call_id": "1", "content": "x" * (50 << 20)}  # a 50 MB tool result
        r = client.post("/v1/chat/completions",
                        json={**base, "tools": [WEATHER], "messages": [*base["messages"], result]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    finally:
        scheduler.close()


def test_a_reply_that_is_only_a_bare_call_is_taken_when_its_arguments_validate():
    """Qwen2.5-Coder-1.5B answers a tool question with the call as fenced JSON, not its tags."""
    tools = tools_from([WEATHER, ADD])
    fenced = '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Oslo"\n  }\n}\n```'
    content, calls = parse_calls(fenced, tools)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]
    doubled = '{{"name": "add", "arguments": {"a": 1, "b": 2}}}'  # as Qwen2.5's template shows the format
    assert [c.name for c in parse_calls(doubled, tools)[1]] == ["add"]
    for text in ('{"name": "add", "arguments": {"a": "one", "b": 2}}',  # not valid for its schema
                 'Here: {"name": "add", "arguments": {"a": 1, "b": 2}}'):  # not the whole reply
        assert parse_calls(text, tools) == (text, [])


def test_a_streamed_bare_call_is_held_back_and_sent_as_a_call():
    fenced = '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```'
    client, scheduler = _client(fenced)
    try:
        lines, deltas = _streamed(client)
        assert not "".join(d.get("content") or "" for d in deltas)
        assert [c["function"]["name"] for d in deltas for c in d.get("tool_calls", [])] == ["get_weather"]
        assert lines[-1]["choices"][0]["finish_reason"] == "tool_calls"
    finally:
        scheduler.close()
