"""The GPU path for real, on a machine with an NVIDIA GPU and a CUDA build of llama.cpp
(benchmarks/gpu.sh builds one and runs these); skipped with the reason everywhere else.
AUTOGLM_GPU_MODEL names a .gguf to use on a machine with no package index (the GPU machine)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from autoglm.engine import hardware
from autoglm.engine.backends import native
from tests.conftest import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
QUESTION = "What is the capital of France? Answer in one word."


def _gpu_or_skip() -> None:
    if not any(g.vendor == "nvidia" for g in hardware.probe().gpus):
        pytest.skip("no NVIDIA GPU here (nvidia-smi found none)")
    if not native.probe_device().llama_gpu_offload:
        pytest.skip("this llama-cpp-python build has no GPU offload (build it with CMAKE_ARGS=-DGGML_CUDA=on)")


@pytest.fixture(scope="module")
def gpu_model(request) -> str:
    _gpu_or_skip()
    path = os.environ.get("AUTOGLM_GPU_MODEL")
    if path:
        return path
    return str(request.getfixturevalue("default_model").primary_path)


def test_doctor_plans_every_layer_on_the_gpu_and_run_answers_without_crashing(gpu_model):
    out = run_cli("doctor", "--json", "--model", gpu_model)
    assert out.returncode == 0, out.stderr[-2000:]  # a CUDA build + onnxruntime used to exit 139 here
    plan = json.loads(out.stdout)["plan"]
    assert plan["gpu_layers"] >= 31 and "fit" in plan["reasons"]["gpu_layers"], plan["reasons"]["gpu_layers"]
    run = run_cli("run", "--model", gpu_model, "--temperature", "0", "--max-tokens", "16", QUESTION)
    assert run.returncode == 0 and "Paris" in run.stdout, run.stderr[-2000:]


def test_the_server_under_batch_on_the_gpu(gpu_model):
    import openai

    from tests.test_server import server

    with server("--model", gpu_model, "--parallel", "8", "--ctx", "1024") as (url, _banner):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        messages = [{"role": "user", "content": QUESTION}]

        def ask(_i: int) -> str:
            reply = client.chat.completions.create(model="default", messages=messages, temperature=0, max_tokens=16)
            return reply.choices[0].message.content

        alone = [ask(0), ask(0)]
        with ThreadPoolExecutor(32) as pool:
            batched = list(pool.map(ask, range(32)))
    # What holds on a GPU, and what README says: every request is answered, correctly; the exact
    # temperature-0 text is not reproducible there. CUDA kernels pick other reduction orders for
    # other batch shapes, so a prompt reused from the prefix cache (1 new token) or decoded beside
    # others can tip a near-tie (seen on an H100: the same request twice gave two wordings).
    assert all("Paris" in a for a in alone)
    assert len(batched) == 32 and all(b and "Paris" in b for b in batched)
    print(f"GPU determinism: alone twice equal: {alone[0] == alone[1]}; "
          f"batched == first alone in {sum(b == alone[0] for b in batched)} of 32 streams")
