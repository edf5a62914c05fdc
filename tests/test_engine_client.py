"""The GUI's engine client against a stdlib HTTP server that answers as the engine does when a step
fails mid-stream (fast tier: no model, no Qt)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoglm.app.engine_process import EngineClient, EngineError
from autoglm.engine.server.protocol import sse_error

CHUNK = {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}


class _Engine(BaseHTTPRequestHandler):
    events: list[str] = []
    ends: bool = True  # False: the connection closes without [DONE], as a dying engine's may

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in self.events:
            self.wfile.write(event.encode())
        if self.ends:
            self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def engine(*events: str, ends: bool = True) -> Iterator[EngineClient]:
    handler = type("Handler", (_Engine,), {"events": list(events), "ends": ends})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield EngineClient(f"http://127.0.0.1:{server.server_address[1]}", "key")
    finally:
        server.shutdown()
        server.server_close()


def test_an_error_event_inside_a_stream_is_an_engine_error_with_the_engines_words():
    """It was a KeyError ('choices') that killed the worker thread and left the chat view streaming."""
    with engine(f"data: {json.dumps(CHUNK)}\n\n", sse_error("the engine failed: llama_decode failed (-3)")) as client:
        pieces = []
        with pytest.raises(EngineError, match="llama_decode failed"):
            for piece in client.chat_stream([{"role": "user", "content": "hi"}]):
                pieces.append(piece)
        assert pieces == ["Hel"]


def test_a_plain_stream_still_streams():
    with engine(f"data: {json.dumps(CHUNK)}\n\n") as client:
        assert "".join(client.chat_stream([{"role": "user", "content": "hi"}])) == "Hel"


def test_a_stream_cut_off_before_its_end_is_an_error_not_a_finished_reply():
    """A reply whose connection closed without [DONE] was returned as complete: the window kept the
    fragment as the answer."""
    with engine(f"data: {json.dumps(CHUNK)}\n\n", ends=False) as client:
        pieces = []
        with pytest.raises(EngineError, match="before the reply ended"):
            for piece in client.chat_stream([{"role": "user", "content": "hi"}]):
                pieces.append(piece)
        assert pieces == ["Hel"]
        with pytest.raises(EngineError, match="before the reply ended"):
            list(client.agent_stream([{"role": "user", "content": "hi"}]))
