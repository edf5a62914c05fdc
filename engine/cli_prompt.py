"""``autoglm prompt tune``: measure candidate prompts on labeled examples and keep the best; and
classification with a tuned prompt (``classify --prompt NAME``). Imports are lazy, as in every
command module: ``autoglm --help`` must not load llama.cpp."""

from __future__ import annotations

import argparse

from autoglm.engine.cli_extract import load_chat
from autoglm.engine.errors import InvalidArgumentError


def cmd_prompt_tune(args: argparse.Namespace) -> int:
    from autoglm.engine.cli_progress import progress_bar
    from autoglm.engine.models.store import check_name
    from autoglm.engine.router import route
    from autoglm.engine.tasks.embed import open_encoder
    from autoglm.engine.tasks.extract import load_schema
    from autoglm.engine.tasks.prompt_tune import encoder_embed, load_tuning_examples, tune

    check_name(args.name)
    if args.evaluate < 2:
        raise InvalidArgumentError(f"--evaluate must be at least 2, got {args.evaluate}")
    examples = load_tuning_examples(args.examples, args.task)
    schema = load_schema(args.schema) if args.schema else None
    if args.task == "extract" and schema is None:
        raise InvalidArgumentError("extract prompts need --schema FILE")
    enc_manifest, encoder = open_encoder(route("embed"))
    prepared, model = load_chat(args, args.task)
    try:
        tuned = tune(model, args.task, examples, encoder_embed(encoder), enc_manifest.name, schema,
                     evaluate=args.evaluate, parallel=model.scheduler.parallel, progress=progress_bar(" candidates"),
                     model_name=prepared.model.label)
        manifest = tuned.install(args.name)
    finally:
        model.close()
    report = tuned.report
    print(f"{'accuracy':>8}  {'shots':>5}  {'origin':<9}  instruction")
    for c in report["candidates"]:
        mark = "*" if (c["instruction"], c["shots"]) == (tuned.instruction, tuned.shots) else " "
        print(f"{c['accuracy']:>7.1f}{mark}  {c['shots']:>5}  {c['origin']:<9}  {c['instruction'][:90]}")
    print(f"before {report['before']:.1f}% -> after {report['after']:.1f}% ({report['metric']} on "
          f"{report['held_out']} held-out examples, {prepared.model.label}); saved {manifest.name} "
          f"version {manifest.version}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    prompt = sub.add_parser("prompt", help="prompts that tune themselves on your labeled examples")
    cmds = prompt.add_subparsers(dest="prompt_cmd", required=True)
    p = cmds.add_parser("tune", help="measure candidate prompts on examples, save the best as a model")
    p.add_argument("--task", required=True, choices=["classify", "extract"])
    p.add_argument("--examples", required=True,
                   help="classify: text,label rows (CSV or JSONL); extract: JSONL of {\"text\", \"output\"}")
    p.add_argument("--schema", help="extract: the JSON schema the outputs follow")
    p.add_argument("--name", required=True, help="store name for the tuned prompt")
    p.add_argument("--evaluate", type=int, default=30, help="held-out examples to measure on (default 30)")
    add_chat_options(p)
    p.set_defaults(func=cmd_prompt_tune)


def add_chat_options(p: argparse.ArgumentParser, model_flag: str = "--model") -> None:
    p.add_argument(model_flag, *(["-m"] if model_flag == "--model" else []), dest="chat_model",
                   help="chat model (default: the task router's, else SmolLM2)")
    p.add_argument("--parallel", type=int, help="texts decoded together (default: the plan's slots)")
    p.add_argument("--ctx", type=int, help="context per text in tokens (default: planned, at most 4096)")
    p.add_argument("--threads", "-t", type=int, help="CPU threads (default: planned)")
    p.add_argument("--gpu-layers", type=int, help="layers to offload to the GPU, -1 for all (default: planned)")
    p.add_argument("--safe", action="store_true", help="most conservative kernels, CPU only")

