"""Ollama's API (fast tier) through FastAPI's TestClient over a scripted fake model: NDJSON
streaming and whole replies, tool calls with object arguments, ``format``, ``options``, the
model listings, Ollama's error shape, and pulls behind the management key. The official
``ollama`` client against the real server is in test_clients_real.py."""

from __future__ import annotations

import json

from tests.fakes import CharBackend, ScriptedExecutor
from tests.test_server_fast import MANAGE, make_client
from tests.test_tools import CALL, WEATHER


def _client(free: str, calls: str = CALL, **config):
    client, scheduler, _ = make_client(ScriptedExecutor(free, calls, n_seq=2, n_batch=48), backend=CharBackend(),
                                       ctx_per_seq=2048, **config)
    return client, scheduler


def _lines(response) -> list[dict]:
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.iter_lines() if line]


def test_chat_streams_ndjson_by_default_and_answers_whole_when_asked():
    client, scheduler = _client("Hello there.")
    try:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "options": {"temperature": 0}}
        with client.stream("POST", "/api/chat", json=body) as r:
            lines = _lines(r)
        assert "".join(x["message"]["content"] for x in lines) == "Hello there."
        assert [x["done"] for x in lines][-1] is True and not any(x["done"] for x in lines[:-1])
        last = lines[-1]
        assert last["done_reason"] == "stop" and last["eval_count"] > 0 and last["prompt_eval_count"] > 0
        whole = client.post("/api/chat", json={**body, "stream": False}).json()
        assert whole["message"] == {"role": "assistant", "content": "Hello there."} and whole["done"]
        cut = client.post("/api/chat", json={**body, "stream": False, "options": {"num_predict": 3}}).json()
        assert cut["message"]["content"] == "Hel" and cut["done_reason"] == "length"
        loaded = client.post("/api/chat", json={"model": "fake-model:latest", "messages": []}).json()
        assert loaded["done_reason"] == "load"  # Ollama's way of loading a model ahead of use
        kept = client.post("/api/generate", json={"model": "fake-model", "keep_alive": 0}).json()
        assert kept["done_reason"] == "load"  # the server's first model is not unloaded
    finally:
        scheduler.close()


def test_generate_applies_the_template_unless_raw():
    client, scheduler = _client("Paris.")
    try:
        r = client.post("/api/generate", json={"model": "fake-model", "prompt": "Capital of France?", "stream": False,
                                               "system": "Be brief."})
        assert r.status_code == 200 and r.json()["response"] == "Paris." and r.json()["done"]
        raw = client.post("/api/generate", json={"model": "fake-model", "prompt": "x", "raw": True, "stream": False})
        assert raw.status_code == 200  # the scripted model has no template to write after: its reply is its own
    finally:
        scheduler.close()


def test_a_tool_call_has_object_arguments():
    client, scheduler = _client("<tool_call>")
    try:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                "tools": [WEATHER], "stream": False}
        message = client.post("/api/chat", json=body).json()["message"]
        assert message["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
        follow = {**body, "messages": [*body["messages"], message, {"role": "tool", "content": "4 C",
                                                                      "tool_name": "get_weather"}]}
        assert client.post("/api/chat", json=follow).status_code == 200  # the call and its result fed back
    finally:
        scheduler.close()


def test_listings_and_errors_in_ollama_shape():
    client, scheduler = _client("x")
    try:
        assert client.get("/api/version").json()["version"]
        assert isinstance(client.get("/api/tags").json()["models"], list)
        [loaded] = client.get("/api/ps").json()["models"]
        assert loaded["name"] == "fake-model" and loaded["context_length"] == 2048
        missing = client.post("/api/chat", json={"model": "../../etc/passwd", "messages": [{"role": "user",
                                                                                            "content": "hi"}]})
        assert missing.status_code == 404 and isinstance(missing.json()["error"], str)
        bad = client.post("/api/chat", json={"model": "fake-model", "messages": [{"role": "robot", "content": "x"}]})
        assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
        image = client.post("/api/chat", json={"model": "fake-model", "messages": [
            {"role": "user", "content": "what is this?", "images": ["aGk="]}]})
        assert image.status_code == 400 and "images" in image.json()["error"]
        schema = client.post("/api/chat", json={"model": "fake-model", "stream": False, "format": {
            "type": "object", "properties": {"a": {"type": "array", "minItems": 10**9}}},
            "messages": [{"role": "user", "content": "x"}]})
        assert schema.status_code == 400 and "out of range" in schema.json()["error"]
        assert client.post("/api/show", json={"model": "nope"}).status_code == 404
    finally:
        scheduler.close()


def test_pulling_is_management_behind_its_key():
    client, scheduler = _client("x", api_key="k")  # the management API is on (key mk) but not sent
    try:
        refused = client.post("/api/pull", json={"model": "qwen2.5-coder-0.5b"}, headers={"Authorization": "Bearer k"})
        assert refused.status_code == 401
        unknown = client.post("/api/pull", json={"model": "no-such-model"}, headers=MANAGE)
        assert unknown.status_code == 422 and "cannot pull" in unknown.json()["error"]
    finally:
        scheduler.close()
