"""The measuring child of ``autoglm tune``: ``python -m autoglm.engine.tuning.child MODEL GPU_LAYERS``
(or ``--spin``: the busy process beside the "busy" measurements).

A setting may crash llama.cpp natively (the extra-buffer path did on one Xeon class), so the
settings are tried in a child: one JSON config per stdin line, one ``RESULT {...}`` line back.
The parent starts one child per OpenMP wait policy (``OMP_WAIT_POLICY`` is read once, when
libgomp loads) and a new one after a crash. The measured path is the scheduler's own executor.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Any

from autoglm.engine.backends.llama_executor import LlamaExecutor
from autoglm.engine.backends.llamacpp import LlamaBackend

PROMPT_TOKENS = 192
DECODE_STEPS = 64
TIME_CAP_S = 2.0  # per phase: a collapsed configuration (busy machine, spinning threads) costs no more
TEXT = ("The committee met on a grey morning to review the harbour accounts, the repairs to the north pier "
        "and the proposal for a new ferry timetable. Members asked why costs had risen by a fifth, and the "
        "treasurer explained that steel, labour and insurance had all become dearer over the winter. ")


def _rows(tokens: list[int], start: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(token=t, pos=start + i, seq=0, logits=i == len(tokens) - 1) for i, t in enumerate(tokens)]


def measure(model: Any, prompt: list[int], config: dict[str, Any]) -> dict[str, float]:
    executor = LlamaExecutor(model, n_seq=1, ctx_per_seq=512, n_batch=512, n_ubatch=config["n_ubatch"],
                             threads=config["threads"], threads_batch=config["threads_batch"],
                             flash_attn=config["flash_attn"], offload_kqv=config.get("gpu_layers", 0) > 0,
                             kv_type=config["kv_type"])
    try:
        prefill: list[float] = []
        spent = 0.0
        while len(prefill) < 3 and (not prefill or spent < TIME_CAP_S):
            executor.trim(0, 0)
            started = time.perf_counter()
            executor.decode(_rows(prompt, 0))
            prefill.append(time.perf_counter() - started)
            spent += prefill[-1]
        steps: list[float] = []
        spent = 0.0
        token = prompt[-1]
        while len(steps) < DECODE_STEPS and (len(steps) < 3 or spent < TIME_CAP_S):
            started = time.perf_counter()
            executor.decode(_rows([token], len(prompt) + len(steps)))
            steps.append(time.perf_counter() - started)
            spent += steps[-1]
        return {"prefill": len(prompt) / min(prefill), "decode": 1.0 / statistics.median(steps)}
    finally:
        executor.close()


def main(path: str, gpu_layers: int) -> None:
    models: dict[tuple[bool, int], LlamaBackend] = {}
    for line in sys.stdin:
        config = json.loads(line)
        layers = int(config.get("gpu_layers") or gpu_layers)
        key = (bool(config["extra_bufts"]), layers)
        if key not in models:
            if layers:  # one GPU split at a time: another one would not fit beside it
                for old in [k for k in models if k[1]]:
                    models.pop(old).llm.close()
            models[key] = LlamaBackend(path, threads=config["threads"], gpu_layers=layers,
                                       use_extra_bufts=key[0], use_mmap=True)
        backend = models[key]
        prompt = backend.tokenize(TEXT * 4)[:PROMPT_TOKENS]
        result = measure(backend.model, prompt, {**config, "gpu_layers": layers})
        print("RESULT " + json.dumps(result), flush=True)


def spin() -> None:
    """The other program of a busy machine, for the "busy" measurements: one core, no rest."""
    while True:
        pass


if __name__ == "__main__":
    if sys.argv[1:] == ["--spin"]:
        spin()
    main(sys.argv[1], int(sys.argv[2]))
