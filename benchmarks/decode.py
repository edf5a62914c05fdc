"""Prefill and decode tokens/s: our engine vs llama.cpp's own llama-bench, side by side in one run.

Usage: LLAMA_BENCH=/path/to/llama-bench python benchmarks/decode.py [--model M] [--threads N] [--reps R]

Both run the same GGUF file with the same threads, GPU layers, flash attention and extra-buffer
(repack) setting the planner chose; the engine goes through the scheduler, the one path the CLI,
the server and the GUI use. Rounds alternate (engine, bench, engine, bench...) so that machine
noise hits both alike; the table shows medians.
Build llama-bench with ../shared/tools/build-llama-tools (sources vendored in the same sdist).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoglm.engine import loader  # noqa: E402
from autoglm.engine.planner import Overrides  # noqa: E402
from autoglm.engine.sampling import GenerationStats, SamplingParams  # noqa: E402
from autoglm.engine.tasks.chat import ChatSession  # noqa: E402

N_PROMPT = 128
N_GEN = 128


def engine_once(model, rep: int) -> tuple[float, float]:
    """pp128 then tg128 through the scheduler, the path every user request takes. Each rep's prompt
    starts with another token, so no prefix is reused (llama-bench starts from an empty cache too);
    decode ignores end-of-generation so every run is N_GEN tokens, like llama-bench."""
    vocab = model.backend.llm.n_vocab()
    prompt = [(rep * 104729 + i * 7919) % (vocab - 1000) + 500 for i in range(N_PROMPT)]
    stats = GenerationStats()
    for _ in model.generate(prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True), stats=stats):
        pass
    pp = N_PROMPT / stats.prefill_s
    stats = GenerationStats()
    params = SamplingParams(temperature=0.0, max_tokens=N_GEN + 1, ignore_eos=True)
    for _ in model.generate(prompt[-1:] if rep % 2 else [prompt[0] + 1], params, stats=stats):
        pass
    return pp, stats.decode_tps


def engine_stream_tg(model) -> float:
    """Decode speed of a real chat reply, streamed with detokenizing and stop handling."""
    chat = ChatSession(model)
    for _ in chat.send("Write a long story about a dragon.", SamplingParams(temperature=0.0, max_tokens=N_GEN)):
        pass
    return chat.last_stats.decode_tps


def bench_once(exe: str, plan, reps: int) -> tuple[float, float]:
    cmd = [exe, "-m", plan.model_path, "-t", str(plan.threads), "-p", str(N_PROMPT), "-n", str(N_GEN), "-r", str(reps),
           "--repack", "1" if plan.use_extra_bufts else "0", "-fa", "1" if plan.flash_attn else "0",
           "-ngl", str(plan.gpu_layers), "-o", "json"]
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
    ap.add_argument("--reps", type=int, default=5, help="alternating rounds (llama-bench runs -r 5 in each)")
    args = ap.parse_args()
    prepared = loader.prepare(args.model, Overrides(threads=args.threads, ctx=args.ctx or None))
    plan = prepared.plan
    model = loader.load_scheduled(prepared, 1, plan.n_ctx)
    exe = os.environ.get("LLAMA_BENCH")
    if not exe or not Path(exe).exists():
        print("LLAMA_BENCH is not set to a llama-bench binary; build one with ../shared/tools/build-llama-tools",
              file=sys.stderr)
        return 2
    engine_once(model, 0)  # warm-up: page in the weights, build graphs
    eng, ref, stream = [], [], []
    for rep in range(args.reps):
        eng.append(engine_once(model, rep + 1))
        ref.append(bench_once(exe, plan, 5))
        stream.append(engine_stream_tg(model))
    model.close()
    med = statistics.median
    e_pp, e_tg = med(p for p, _ in eng), med(t for _, t in eng)
    r_pp, r_tg = med(p for p, _ in ref), med(t for _, t in ref)
    s_tg = med(stream)
    print(f"model {prepared.model.label} ({prepared.model.facts.quant}), threads {plan.threads}, ctx {plan.n_ctx}, "
          f"GPU layers {plan.gpu_layers}, flash attention {'on' if plan.flash_attn else 'off'}, "
          f"extra buffers {'on' if plan.use_extra_bufts else 'off'}; {args.reps} alternating rounds "
          "(llama-bench -r 5 each), medians")
    print(f"{'':<34}{'pp' + str(N_PROMPT) + ' t/s':>14}{'tg' + str(N_GEN) + ' t/s':>14}")
    print(f"{'llama-bench (llama.cpp C++)':<34}{r_pp:>14.1f}{r_tg:>14.1f}")
    print(f"{'autoglm engine (scheduler)':<34}{e_pp:>14.1f}{e_tg:>14.1f}")
    print(f"{'autoglm engine / llama-bench':<34}{e_pp / r_pp:>13.2f}x{e_tg / r_tg:>13.2f}x")
    print(f"{'autoglm streamed chat path':<34}{'':>14}{s_tg:>14.1f}   ({s_tg / r_tg:.2f}x, incl. detokenize)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
