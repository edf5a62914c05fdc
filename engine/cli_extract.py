"""``autoglm extract``: texts -> JSON objects that validate against a schema, one line each.

For a file, stdout gets exactly one line per input line, in order: the object, or ``null`` where
that text failed (why goes to stderr with its line number), so the output lines up with the input;
the exit code is 1 when any failed. Imports are lazy: ``autoglm --help`` must not load llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autoglm.engine.errors import ExtractionFailedError, InvalidArgumentError


def lines(path: str) -> Iterator[str]:
    """Texts of a file (``-``: stdin), one per line, blank ones included (each gets its null line, so
    output line N answers input line N), read as they are needed."""
    try:
        handle = sys.stdin if path == "-" else Path(path).open(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            for line in handle:
                yield line.strip()
        except UnicodeDecodeError:
            raise InvalidArgumentError(f"{path} is not UTF-8 text") from None


def count(path: str) -> int | None:
    if path == "-":
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return None


def load_chat(args: argparse.Namespace, task: str, single: bool = False) -> tuple[Any, Any]:
    """(prepared, model) for a batch task: the router's model, as many sequences as the plan's slots."""
    from autoglm.engine import loader
    from autoglm.engine.cli_progress import progress_bar
    from autoglm.engine.planner import Overrides
    from autoglm.engine.router import route

    option = lambda name: getattr(args, name, None)  # noqa: E731 - commands share some of these flags
    overrides = Overrides(threads=option("threads"), gpu_layers=option("gpu_layers"), safe=bool(option("safe")))
    chosen = option("chat_model") if hasattr(args, "chat_model") else option("model")  # classify's --model is not
    prepared = loader.prepare(route(task, chosen), overrides, progress=progress_bar())
    parallel = 1 if single else (option("parallel") or prepared.plan.slots)
    if parallel < 1:
        raise InvalidArgumentError(f"--parallel must be at least 1, got {parallel}")
    ctx = option("ctx") or min(prepared.plan.n_ctx, 4096)
    return prepared, loader.load_scheduled(prepared, parallel=parallel, ctx_per_seq=ctx)


def cmd_extract(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from autoglm.engine.hardware import probe
    from autoglm.engine.runtime import Runtime
    from autoglm.engine.tasks.extract import load_schema

    if not args.schema and not args.prompt:
        raise InvalidArgumentError("give --schema FILE (or --prompt NAME, a tuned extract prompt)")
    schema = load_schema(args.schema) if args.schema else None  # else the tuned prompt's
    if bool(args.text) == bool(args.file):
        raise InvalidArgumentError("give one text, or --file with one text per line (- for stdin)")
    if args.max_tokens < 1:
        raise InvalidArgumentError(f"max tokens must be at least 1, got {args.max_tokens}")
    runtime = Runtime("extract", lambda: load_chat(args, "extract", single=bool(args.text))[1], probe(),
                      encoders_alone=True)
    try:
        extractor = runtime.extractor(schema, max_tokens=args.max_tokens, prompt=args.prompt)
        if args.text:
            result = extractor.extract(args.text)
            if result.data is None:
                raise ExtractionFailedError(f"no object extracted: {result.error}")
            print(json.dumps(result.data, ensure_ascii=False))
            return 0
        failed = total = 0
        bar = tqdm(total=count(args.file), unit="text", file=sys.stderr, disable=None)
        with bar:
            for total, result in enumerate(extractor.extract_many(lines(args.file), runtime.scheduler.parallel), 1):
                if result.data is None and result.text.strip():  # a blank line's null is no failure
                    failed += 1
                    bar.write(f"line {total}: {result.error}", file=sys.stderr)
                print(json.dumps(result.data, ensure_ascii=False), flush=True)
                bar.update(1)
        if failed:
            print(f"autoglm: {failed} of {total} text(s) gave no object (null lines)", file=sys.stderr)
        return 1 if failed else 0
    finally:
        runtime.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="JSON objects that follow a schema, from texts (JSON lines)")
    p.add_argument("text", nargs="?")
    p.add_argument("--schema", "-s", help="JSON schema file (an object schema)")
    p.add_argument("--prompt", help="a tuned extract prompt (`autoglm prompt tune`): its instruction and schema")
    p.add_argument("--file", help="one text per line (- for stdin); prints one line per text, null if it failed")
    p.add_argument("--model", "-m", help="chat model (default: the task router's, else SmolLM2)")
    p.add_argument("--max-tokens", type=int, default=512, help="longest answer per text (default 512)")
    p.add_argument("--parallel", type=int, help="texts decoded together (default: the plan's slots)")
    p.add_argument("--ctx", type=int, help="context per text in tokens (default: planned, at most 4096)")
    p.add_argument("--threads", "-t", type=int, help="CPU threads (default: planned)")
    p.add_argument("--gpu-layers", type=int, help="layers to offload to the GPU, -1 for all (default: planned)")
    p.add_argument("--safe", action="store_true", help="most conservative kernels, CPU only")
    p.set_defaults(func=cmd_extract)
