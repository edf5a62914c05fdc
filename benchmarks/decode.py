"""Prefill and decode tokens/s: our engine vs llama.cpp's own llama-bench, side by side in one run.

Usage: LLAMA_BENCH=/path/to/llama-bench python benchmarks/decode.py [--model M] [--threads N] [--reps R]

Both run the same GGUF file with the same threads and the same extra-buffer (repack) setting the
planner chose; the engine goes through the same backend the CLI uses. Runs alternate (engine,
bench, engine, bench...) so that machine noise hits both alike; the table shows medians.
Build llama-bench with ../shared/tools/build-llama-tools (sources vendored in the same sdist).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import loader  # noqa: E402
from engine.backends.llamacpp import SamplingParams  # noqa: E402
from engine.planner import Overrides  # noqa: E402
from engine.tasks.chat import ChatSession  # noqa: E402

N_PROMPT = 128
N_GEN = 128


def engine_once(backend) -> tuple[float, float]:
    """pp128 then tg128 on a cleared cache, like llama-bench (random-ish tokens, no early stop)."""
    vocab = backend.llm.n_vocab()
    prompt = [(i * 7919) % (vocab - 1000) + 500 for i in range(N_PROMPT)]
    backend.reset()
    start = time.perf_counter()
    backend.llm.eval(prompt)
    pp = N_PROMPT / (time.perf_counter() - start)
    backend.reset()
    backend.llm.eval(prompt[:1])
    # decode: sample greedily and feed back; ignore end-of-generation so every run is N_GEN tokens
    start = time.perf_counter()
    for _ in range(N_GEN):
        tok = backend.llm.sample(temp=0.0)
        backend.llm.eval([tok])
    tg = N_GEN / (time.perf_counter() - start)
    return pp, tg


def engine_stream_tg(backend) -> float:
    """Decode speed through the full streaming path (detokenize, stop handling) the CLI uses."""
    backend.reset()
    chat = ChatSession(backend)
    for _ in chat.send("Write a long story about a dragon.", SamplingParams(temperature=0.0, max_tokens=N_GEN)):
        pass
    return chat.last_stats.decode_tps


def bench_once(exe: str, model: str, threads: int, repack: bool, flash_attn: bool) -> tuple[float, float]:
    cmd = [exe, "-m", model, "-t", str(threads), "-p", str(N_PROMPT), "-n", str(N_GEN), "-r", "1",
           "--repack", "1" if repack else "0", "-fa", "1" if flash_attn else "0", "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    pp = next(r["avg_ts"] for r in rows if r["n_prompt"] and not r["n_gen"])
    tg = next(r["avg_ts"] for r in rows if r["n_gen"] and not r["n_prompt"])
    return pp, tg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model name or .gguf (default: the embedded SmolLM2)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--ctx", type=int, default=N_PROMPT + N_GEN,
                    help="context size; default pp+tg, what llama-bench allocates (0 = the planner's choice)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    prepared = loader.prepare(args.model, Overrides(threads=args.threads, ctx=args.ctx or None))
    plan = prepared.plan
    backend = loader.load(prepared)
    exe = os.environ.get("LLAMA_BENCH")
    if not exe or not Path(exe).exists():
        print("LLAMA_BENCH is not set to a llama-bench binary; build one with ../shared/tools/build-llama-tools",
              file=sys.stderr)
        return 2
    engine_once(backend)  # warm-up: page in the weights, build graphs
    eng, ref, stream = [], [], []
    for _ in range(args.reps):
        eng.append(engine_once(backend))
        ref.append(bench_once(exe, plan.model_path, plan.threads, plan.use_extra_bufts, plan.flash_attn))
        stream.append(engine_stream_tg(backend))
    med = statistics.median
    e_pp, e_tg = med(p for p, _ in eng), med(t for _, t in eng)
    r_pp, r_tg = med(p for p, _ in ref), med(t for _, t in ref)
    s_tg = med(stream)
    print(f"model {prepared.model.label} ({prepared.model.facts.quant}), threads {plan.threads}, ctx {plan.n_ctx}, "
          f"extra buffers {'on' if plan.use_extra_bufts else 'off'}, {args.reps} alternating reps, medians")
    print(f"{'':<34}{'pp' + str(N_PROMPT) + ' t/s':>14}{'tg' + str(N_GEN) + ' t/s':>14}")
    print(f"{'llama-bench (llama.cpp C++)':<34}{r_pp:>14.1f}{r_tg:>14.1f}")
    print(f"{'autoglm engine (backend)':<34}{e_pp:>14.1f}{e_tg:>14.1f}")
    print(f"{'autoglm engine / llama-bench':<34}{e_pp / r_pp:>13.2f}x{e_tg / r_tg:>13.2f}x")
    print(f"{'autoglm streamed chat path':<34}{'':>14}{s_tg:>14.1f}   ({s_tg / r_tg:.2f}x, incl. detokenize)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
