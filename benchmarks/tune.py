"""What measured tuning buys: llama.cpp's defaults vs the planner's rules vs `autoglm tune`'s
measured settings, on an idle machine and beside a busy process, side by side in one run.

Usage: LLAMA_BENCH=/path/to/llama-bench python benchmarks/tune.py [--model M] [--reps R] [--budget S]

The engine columns go through the scheduler (the path every request takes); "busy" rounds run
with another process spinning on one core, as a desktop's other programs do. Rounds alternate
(rules, tuned, llama-bench; idle then busy) so noise hits all alike; the table shows medians.
Tuning runs first (for --budget seconds) unless this model is already tuned on this device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoglm.engine import loader  # noqa: E402
from autoglm.engine.tuning.runner import BUSY_LOOP, tune  # noqa: E402
from benchmarks.decode import N_GEN, N_PROMPT, engine_once  # noqa: E402

SETTLE_S = 2.5  # the scheduler's load check runs once a second: let it see the spinner first


def llama_bench_defaults(exe: str, model: str) -> tuple[float, float]:
    """llama-bench with nothing but the model and the sizes: llama.cpp's own defaults."""
    out = subprocess.run([exe, "-m", model, "-p", str(N_PROMPT), "-n", str(N_GEN), "-r", "3", "-o", "json"],
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    return (next(r["avg_ts"] for r in rows if r["n_prompt"] and not r["n_gen"]),
            next(r["avg_ts"] for r in rows if r["n_gen"] and not r["n_prompt"]))


@contextmanager
def _load(busy: bool) -> Iterator[None]:
    spinner = subprocess.Popen(BUSY_LOOP) if busy else None
    try:
        time.sleep(SETTLE_S)
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def _round(model, busy: bool, rep: int) -> tuple[float, float]:  # noqa: ANN001 - a ScheduledBackend
    with _load(busy):
        engine_once(model, 1000 + rep)  # steps in this load, so the scheduler's thread switch can act
        time.sleep(1.1)
        return engine_once(model, rep + 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model name or .gguf (default: the embedded SmolLM2)")
    ap.add_argument("--reps", type=int, default=3, help="alternating rounds")
    ap.add_argument("--budget", type=float, default=60, help="tuning budget when not tuned yet")
    args = ap.parse_args()
    exe = os.environ.get("LLAMA_BENCH")
    rules = loader.prepare(args.model, measured=False)
    measured = loader.prepare(args.model)
    if measured.tuned is None:
        print(f"tuning first ({args.budget:.0f} s)...", file=sys.stderr)
        tune(rules, args.budget)
        measured = loader.prepare(args.model)
    # One engine loaded at a time: two contexts driven from two threads keep two OpenMP teams, and
    # alternating between them measured 40% slower decode here than either alone.
    configs = {"planner rules": rules, "autoglm tune": measured}
    results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for rep in range(args.reps):
        for name, prepared in configs.items():
            model = loader.load_scheduled(prepared, 1, N_PROMPT + N_GEN + 8)
            try:
                for busy in (False, True):
                    results.setdefault((name, busy), []).append(_round(model, busy, rep))
            finally:
                model.close()
        if exe:
            for busy in (False, True):
                with _load(busy):
                    results.setdefault(("llama.cpp defaults (llama-bench)", busy), []).append(
                        llama_bench_defaults(exe, str(rules.model.path)))
    plan, tuned = measured.plan, measured.tuned
    print(f"model {measured.model.label} ({measured.model.facts.quant}); pp{N_PROMPT} / tg{N_GEN} tokens/s, "
          f"medians of {args.reps} alternating rounds; busy = another process spinning on one core")
    print(f"measured plan: threads {plan.threads} (busy: {plan.threads_busy or plan.threads}), prefill threads "
          f"{plan.threads_batch}, micro-batch {plan.n_ubatch}, flash attention {'on' if plan.flash_attn else 'off'}, "
          f"KV {plan.kv_type}, extra buffers {'on' if plan.use_extra_bufts else 'off'}, waiting {plan.wait_policy}"
          f" ({len(tuned.trials) if tuned else 0} settings measured)")
    if not exe:
        print("(LLAMA_BENCH not set: no llama.cpp column; build it with ../shared/tools/build-llama-tools)")
    med = statistics.median
    names = list(dict.fromkeys(name for name, _ in results))
    print(f"{'':<36}{'idle pp':>10}{'idle tg':>10}{'busy pp':>10}{'busy tg':>10}")
    table = {}
    for name in names:
        cells = []
        for busy in (False, True):
            runs = results[(name, busy)]
            cells += [med(p for p, _ in runs), med(t for _, t in runs)]
        table[name] = cells
        print(f"{name:<36}" + "".join(f"{c:>10.1f}" for c in cells))
    base = table["planner rules"]
    print(f"{'autoglm tune / planner rules':<36}" + "".join(f"{t / b:>9.2f}x" for t, b in zip(table["autoglm tune"],
                                                                                              base, strict=True)))
    ref = next((table[n] for n in names if n.startswith("llama.cpp")), None)
    if ref:
        print(f"{'autoglm tune / llama.cpp defaults':<36}" + "".join(
            f"{t / r:>9.2f}x" for t, r in zip(table["autoglm tune"], ref, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
