"""What `tune --workload documents` buys: questions over news articles (long prompt, short answer)
with llama.cpp's weight repacking on (the chat choice) and off, side by side in one run.

Usage: python -m benchmarks.workload [--model M] [--docs N] [--threads T]

Each setting loads the model in a fresh process and answers the same articles one at a time (no
prefix shared between them); the settings alternate over two halves of the articles, so drift on
a noisy machine hits both. The table compares time to the first token and, for the articles whose
two replies came out the same length, the whole request.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "In three sentences: what is this article about?"
MAX_TOKENS = 100


def articles(n: int) -> list[str]:
    from benchmarks.datasets import bbc_news

    data = bbc_news(seed=3)
    return [t for t in data.test_texts if 2500 < len(t) < 5000][:n]


def child(model_name: str, threads: int, repack: bool, first: int, last: int) -> None:
    """One setting over articles[first:last]: a JSON line per request on stdout."""
    from autoglm.engine import loader
    from autoglm.engine.planner import Overrides
    from autoglm.engine.sampling import GenerationStats, SamplingParams
    from autoglm.engine.tasks.chat import PromptBuilder

    prepared = loader.prepare(model_name, Overrides(threads=threads))
    prepared.plan.use_extra_bufts = repack
    model = loader.load_scheduled(prepared, 1, 4096, speculative=False)
    prompts = PromptBuilder(model)
    for i, text in enumerate(articles(last)[first:last], first):
        tokens = prompts.tokens([{"role": "user", "content": f"{text}\n\n{QUESTION}"}])
        stats = GenerationStats()
        started = time.perf_counter()
        for _ in model.generate(tokens, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), stats=stats):
            pass
        print(json.dumps({"doc": i, "prompt": len(tokens), "reply": stats.completion_tokens,
                          "ttft": stats.prefill_s, "total": time.perf_counter() - started}), flush=True)
    model.close()


def run(model_name: str, threads: int, repack: bool, first: int, last: int) -> dict[int, dict]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.workload", "--child", str(int(repack)), str(first),
                          str(last), "--model", model_name, "--threads", str(threads)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["doc"]: r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.docs < 2:
        ap.error("--docs must be at least 2 (the settings alternate over two halves)")
    if args.child:
        child(args.model, args.threads, bool(args.child[0]), args.child[1], args.child[2])
        return
    half = args.docs // 2
    on, off = run(args.model, args.threads, True, 0, half), run(args.model, args.threads, False, 0, half)
    off |= run(args.model, args.threads, False, half, args.docs)
    on |= run(args.model, args.threads, True, half, args.docs)
    print(f"{args.model}, {args.threads} threads, one request at a time, {MAX_TOKENS} reply tokens at most")
    print(f"{'article':>8}{'prompt':>8}{'reply on/off':>14}{'TTFT on':>9}{'off':>7}{'ratio':>7}"
          f"{'total on':>10}{'off':>7}{'ratio':>7}")
    ttft, whole = [], []
    for i in sorted(on):
        a, b = on[i], off[i]
        same = a["reply"] == b["reply"]
        ttft.append(a["ttft"] / b["ttft"])
        if same:
            whole.append(a["total"] / b["total"])
        print(f"{i:>8}{a['prompt']:>8}{a['reply']:>7}/{b['reply']:<6}{a['ttft']:>9.2f}{b['ttft']:>7.2f}"
              f"{ttft[-1]:>6.2f}x{a['total']:>10.2f}{b['total']:>7.2f}"
              + (f"{whole[-1]:>6.2f}x" if same else "   (replies differ)"))
    print(f"repacking off: first token {min(ttft):.2f}-{max(ttft):.2f}x sooner; whole request "
          + (f"{min(whole):.2f}-{max(whole):.2f}x faster where the replies were the same length" if whole
             else "not comparable (every reply differed in length)"))


if __name__ == "__main__":
    main()
