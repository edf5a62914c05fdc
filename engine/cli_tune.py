"""``autoglm tune [MODEL]``: measure llama.cpp's settings for a model on this device and keep the
fastest for every later run (the planner then says "measured"). Lazy imports, as in every
command module."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from autoglm.engine.errors import InvalidArgumentError

MIN_BUDGET_S = 5


def cmd_tune(args: argparse.Namespace) -> int:
    from autoglm.engine import loader
    from autoglm.engine.cli_progress import progress_bar
    from autoglm.engine.planner import Overrides
    from autoglm.engine.router import route
    from autoglm.engine.tuning import variants
    from autoglm.engine.tuning.runner import tune
    from autoglm.engine.tuning.variants import parse_quants

    if not args.budget >= MIN_BUDGET_S:  # (nan too)
        raise InvalidArgumentError(f"--budget must be at least {MIN_BUDGET_S} seconds, got {args.budget}")
    quants = parse_quants(args.quants) if args.quants else None
    if not 0 <= args.max_kl or not 0 <= args.min_top1 <= 1:
        raise InvalidArgumentError("--max-kl must be at least 0 and --min-top1 between 0 and 1")
    prepared = loader.prepare(route("chat", args.model), Overrides(gpu_layers=args.gpu_layers),
                              progress=progress_bar(), measured=False)
    if quants:
        rows, chosen, why = variants.measure(prepared, quants, args.max_kl, args.min_top1,
                                             note=lambda line: print("  " + line, file=sys.stderr))
        print(render_variants(rows, chosen))
        print(why + "\n")
        if chosen.name != (prepared.model.manifest.name if prepared.model.manifest else None):
            prepared = loader.prepare(chosen.name, Overrides(gpu_layers=args.gpu_layers), measured=False)
    print(f"Measuring {prepared.model.label} for at most {args.budget:.0f} s (each setting in a child process)",
          file=sys.stderr)

    def on_trial(config, speed) -> None:  # noqa: ANN001 - tuning.search types, imported lazily
        result = f"{speed.prefill:7.0f} {speed.decode:7.1f}" if speed.ok else f"  {speed.error}"
        print(f"  {config.label():<58}{result}", file=sys.stderr)

    tuned = tune(prepared, args.budget, on_trial, user_layers=args.gpu_layers is not None, workload=args.workload)
    if not tuned.base.ok:
        print(f"autoglm: error: the planned settings could not be measured: {tuned.base.error}", file=sys.stderr)
        return 1
    print(render(tuned))
    return 0


def render(tuned) -> str:  # noqa: ANN001 - a tuning.search.Tuned
    """The table doctor and `tune` print: the rules' choice, the measured one, and under load."""
    rows = [("rules (planner)", tuned.trials[0].config.label(), tuned.base),
            ("measured best", tuned.idle.label(), tuned.best)]
    if tuned.busy is not None and tuned.busy_base and tuned.busy_best:
        rows += [("busy: same threads", replace(tuned.idle, busy=True).label(), tuned.busy_base),
                 ("busy: measured", tuned.busy.label(), tuned.busy_best)]
    lines = [f"{'':<22}{'settings':<58}{'prefill':>9}{'decode':>9}   tok/s"]
    lines += [f"{name:<22}{label:<58}{s.prefill:>9.0f}{s.decode:>9.1f}" for name, label, s in rows]
    lines.append(f"{len(tuned.trials)} settings measured in {tuned.seconds:.0f} s, chosen for "
                 f"{describe(tuned.workload)}; kept for this model, device and llama.cpp build (`autoglm doctor` "
                 "shows the plan that uses them)")
    return "\n".join(lines)


def describe(workload: str) -> str:
    from autoglm.engine.tuning.search import WORKLOADS

    ratio = WORKLOADS.get(workload)
    return (f"{workload} ({ratio:.0f} prompt tokens per reply token: the whole request's time)" if ratio
            else f"{workload} (reading speed first: no prompt gain that slows replies)")


def render_variants(rows, chosen) -> str:  # noqa: ANN001 - tuning.quality Variants
    lines = [f"{'version':<28}{'quant':<8}{'prefill':>9}{'decode':>9}{'KL nats':>9}{'top-1':>8}"]
    for r in rows:
        q = f"{r.quality.kl:>9.4f}{r.quality.top1:>8.1%}" if r.quality else f"{'(ref)':>9}{'':>8}"
        mark = "  <- chosen" if r is chosen else ""
        lines.append(f"{r.name:<28}{r.quant:<8}{r.prefill:>9.0f}{r.decode:>9.1f}{q}{mark}")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="measure llama.cpp settings for a model on this device; later runs use the fastest")
    p.add_argument("model", nargs="?", help="installed model or source (default: the chat model)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds to spend measuring (default 60)")
    p.add_argument("--gpu-layers", type=int, help="tune for this many layers on the GPU (default: planned)")
    from autoglm.engine.tuning.search import WORKLOADS  # pure and light: no model code

    p.add_argument("--workload", choices=list(WORKLOADS), default="chat",
                   help="what to be fastest at: chat (replies read as they stream; default) or documents (long "
                   "prompts, short answers: questions over files, classify and extract by a tuned prompt)")
    p.add_argument("--quants", help="also these versions (e.g. Q4_0,Q8_0: an hf: model's repo files, else "
                   "re-quantized), measure speed and quality against the most precise, and run the fastest "
                   "within the quality budget from now on")
    p.add_argument("--max-kl", type=float, default=0.05, help="quality budget: mean KL divergence, nats per token "
                   "(default 0.05)")
    p.add_argument("--min-top1", type=float, default=0.90, help="quality budget: top-1 agreement (default 0.90)")
    p.set_defaults(func=cmd_tune)
