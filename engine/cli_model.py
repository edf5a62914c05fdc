"""Opening the chat model for a command (run, chat, ask): planned, behind the scheduler the server
runs, and closed however the command ends; and the sampling flags every such command takes."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from autoglm.engine.cli_progress import progress_bar


def overrides(args: argparse.Namespace):
    from autoglm.engine.planner import Overrides

    return Overrides(threads=args.threads, ctx=args.ctx, gpu_layers=args.gpu_layers, safe=args.safe)


def sampling(args: argparse.Namespace):
    from autoglm.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, stop=args.stop or [])
    params.validate()
    return params


@contextmanager
def open_model(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """The planned model behind the scheduler the server runs, closed however the command ends: a
    Ctrl-C that left the scheduler thread decoding while the interpreter shut down segfaulted."""
    from autoglm.engine import loader
    from autoglm.engine.router import route

    prepared = loader.prepare(route("chat", args.model), overrides(args), progress=progress_bar())
    backend = loader.load_scheduled(prepared, draft=args.draft)
    try:
        yield prepared, backend
    finally:
        with signals_held():  # a second Ctrl-C must not cut the close short: the same crash again
            backend.close()


@contextmanager
def signals_held() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def stream(pieces: Iterator[str]) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
