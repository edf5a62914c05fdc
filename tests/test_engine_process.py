"""The GUI's engine child: start, stream, cancel, survive a native-style kill, restart in safe mode."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from autoglm.app.engine_process import EngineError, EngineOptions, EngineProcess

pytestmark = pytest.mark.slow  # real models or processes (the full tier)

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture
def engine(default_model, tmp_path):
    proc = EngineProcess(EngineOptions(parallel=1), log_path=tmp_path / "engine.log")
    proc.start()
    yield proc
    proc.stop()


def test_streams_a_reply_with_its_own_key(engine):
    client = engine.client()
    assert "Paris" in "".join(client.chat_stream(QUESTION, temperature=0, max_tokens=16))
    stranger = type(client)(engine.url, "wrong-key")
    with pytest.raises(EngineError, match="API key"):
        stranger.get("/v1/models")


def test_cancel_stops_the_generation(engine):
    client, cancel = engine.client(), threading.Event()
    pieces = []
    for piece in client.chat_stream([{"role": "user", "content": "Tell a very long story."}], cancel=cancel,
                                    max_tokens=800):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert len(pieces) == 3
    for _ in range(50):
        if client.get("/health")["active"] == 0:
            break
        threading.Event().wait(0.1)
    assert client.get("/health")["active"] == 0


def test_stopping_the_engine_mid_reply_ends_the_stream_with_its_words_and_exit_0(engine):
    """Closing the window mid-reply: the child (``--grace 0``) ends the stream with an error event,
    which the client raises as EngineError (it raised KeyError in a background thread), and exits 0."""
    client, pieces = engine.client(), []
    proc = engine.proc
    with pytest.raises(EngineError, match="shut down before this reply finished"):
        for piece in client.chat_stream([{"role": "user", "content": "Tell a very long story."}], max_tokens=2000):
            pieces.append(piece)
            if len(pieces) == 3:
                threading.Thread(target=engine.stop).start()
    assert proc is not None and proc.wait(timeout=30) == 0


def test_a_killed_engine_is_described_and_restarts_in_safe_mode(engine):
    os.kill(engine.proc.pid, signal.SIGSEGV)  # what a native crash looks like from outside
    engine.proc.wait(timeout=30)
    assert not engine.alive and engine.describe_exit().startswith("killed by SIGSEGV")
    with pytest.raises(EngineError, match="not answering"):
        engine.client().get("/health")
    engine.options.safe = True
    engine.start()
    assert "Paris" in "".join(engine.client().chat_stream(QUESTION, temperature=0, max_tokens=16))
