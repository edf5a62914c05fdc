"""Decode speed beside other busy programs: the untuned default against every fixed thread count.

Usage: python benchmarks/busy.py [--model M] [--tokens N] [--hogs 0,1,2] [--reps R]

For each number of CPU hogs (``python -c "while 1: pass"``, started fresh and left to settle), a
fresh engine per setting (the default, which adapts its threads, and ``--threads`` 1..cores) decodes
N tokens of a chat reply (end-of-text ignored, so every run is N tokens) R times; the table shows
the median tokens/s and the default's ratio to the best fixed count *for that load*. Settings
alternate within a round so machine noise hits all alike. A last row starts the hogs, then stops
them mid-run: the default must come back to the idle count (the "recover" column).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoglm.engine import loader  # noqa: E402
from autoglm.engine.planner import Overrides  # noqa: E402
from autoglm.engine.sampling import GenerationStats, SamplingParams  # noqa: E402
from autoglm.engine.scheduler.cpu_load import available_cores  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to cook."


def hogs(n: int) -> list[subprocess.Popen[bytes]]:
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]
    time.sleep(0.5 if n else 0)
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def decode_tps(model_ref: str | None, threads: int | None, tokens: int) -> tuple[float, int]:
    """One fresh engine (as a new `autoglm run` would be), one reply; (tokens/s, thread switches)."""
    prepared = loader.prepare(model_ref, Overrides(threads=threads))
    model = loader.load_scheduled(prepared)
    try:
        prompt = model.tokenize(PROMPT)
        stats = GenerationStats()
        params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        for _ in model.generate(prompt, params, stats=stats):
            pass
        return stats.decode_tps, model.scheduler.stats.get("thread_switches", 0)
    finally:
        model.close()


def recovery(model_ref: str | None, tokens: int, n_hogs: int) -> str:
    """Hogs for the first part of a long reply, then none: did the default go back to all threads?"""
    prepared = loader.prepare(model_ref)
    model = loader.load_scheduled(prepared)
    procs = hogs(n_hogs)
    timer = threading.Timer(3.0, stop, args=(procs,))
    timer.start()
    try:
        prompt = model.tokenize(PROMPT)
        params = SamplingParams(temperature=0.0, max_tokens=tokens * 8, ignore_eos=True)
        deadline = time.monotonic() + 8
        for _ in model.generate(prompt, params):
            if time.monotonic() > deadline:
                break
        switch = model.scheduler.thread_switch
        assert switch is not None
        return f"{switch.switches} switches, ends on {switch.current[0]} of {switch.idle[0]} threads"
    finally:
        timer.cancel()
        stop(procs)
        model.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="an installed model or a .gguf (default: the default model)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--hogs", default="0,1,2")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    cores = available_cores()
    counts = list(range(1, cores + 1))
    print(f"model: {args.model or 'default'}; {cores} cores; {args.tokens} tokens a reply; median of {args.reps}")
    print(f"| busy cores beside | default tok/s (switches) | {' | '.join(f'{t} thread(s)' for t in counts)} "
          "| best fixed | default / best |")
    print(f"|---|---|{'---|' * len(counts)}---|---|")
    for n in (int(x) for x in args.hogs.split(",")):
        procs = hogs(n)
        runs: dict[int | None, list[float]] = {None: [], **{t: [] for t in counts}}
        switches = 0
        try:
            for _ in range(args.reps):
                for threads in runs:
                    tps, sw = decode_tps(args.model, threads, args.tokens)
                    runs[threads].append(tps)
                    switches += sw if threads is None else 0
        finally:
            stop(procs)
        med = {k: statistics.median(v) for k, v in runs.items()}
        best = max(counts, key=lambda t: med[t])
        print(f"| {n} | {med[None]:.1f} ({switches}) | {' | '.join(f'{med[t]:.1f}' for t in counts)} "
              f"| {best} | {med[None] / med[best]:.2f}x |", flush=True)
    print(f"\nrecover (1 hog for 3 s, then none): {recovery(args.model, args.tokens, 1)}")


if __name__ == "__main__":
    os.environ.setdefault("AUTOGLM_AUTOTUNE", "0")
    main()
