"""SIGTERM to `autoglm serve` as a Kubernetes replica gets it (slow tier, a real server): readiness
503 at once and new requests refused, the stream in flight finishes whole, exit 0; at the grace
period's end (or a second signal) what is left ends with an error event, still exit 0, never a
traceback. Before the fix a stream outliving uvicorn's 5 s shutdown raised CancelledError and the
process re-raised SIGTERM (exit 143)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.slow


def _serve(*args: str) -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen([sys.executable, "-m", "autoglm", "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving" in line, proc.stderr.read() if proc.stderr else ""
    url = urlparse(line.split(" on ")[1].split()[0])
    return proc, url.hostname or "127.0.0.1", url.port or 0


def _stream(host: str, port: int, max_tokens: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(host, port, timeout=120)
    body = {"messages": [{"role": "user", "content": "Count from 1 to 500, one number per line."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    for _ in range(6):  # the reply is streaming
        resp.readline()
    return conn, resp


def _events(resp: http.client.HTTPResponse) -> list[dict]:
    """The rest of the stream's events, up to [DONE] (the connection must end it cleanly)."""
    out = []
    for raw in resp:
        line = raw.decode().strip()
        if line == "data: [DONE]":
            return out
        if line.startswith("data: "):
            out.append(json.loads(line[6:]))
    raise AssertionError(f"the stream was cut without [DONE] after {len(out)} events")


def _get(host: str, port: int, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, json.dumps(body) if body else None, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else {}


def test_sigterm_drains_the_stream_in_flight_then_exits_0(default_model):
    proc, host, port = _serve("--grace", "60")
    conn, resp = _stream(host, port, 160)
    assert _get(host, port, "/health/ready")[0] == 200
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    status, ready = _get(host, port, "/health/ready")
    assert status == 503 and ready["status"] == "draining"
    assert _get(host, port, "/health/live")[0] == 200
    assert _get(host, port, "/health", "HEAD")[0] == 503
    refused, body = _get(host, port, "/v1/chat/completions", "POST",
                         {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert refused == 503 and body["error"]["code"] == "draining"
    events = _events(resp)  # the stream in flight goes on to its end
    conn.close()
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert not any("error" in e for e in events)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "draining" in err and "server stopped" in err


@pytest.mark.parametrize("how", ["grace period", "second signal"])
def test_what_outlives_the_drain_ends_with_an_error_event_and_exit_0(default_model, how):
    """``--grace 0`` is what the desktop window gives its engine child when it closes mid-stream."""
    proc, host, port = _serve("--grace", "0" if how == "grace period" else "600")
    conn, resp = _stream(host, port, 4000)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    if how == "second signal":
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
    events = _events(resp)
    conn.close()
    assert "shut down before this reply finished" in events[-1]["error"]["message"]
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    assert time.monotonic() - started < 15
