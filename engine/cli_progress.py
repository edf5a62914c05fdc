"""Progress bars for the CLI's long jobs (pull, quantize, convert); JSON lines instead when a program
reads them (``AUTOGLM_PROGRESS=json``: the desktop app shows its engine child's first-run install)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

JSON_EVERY_S = 0.25


def _json_lines() -> Callable[[str, int, int], None]:
    last = [0.0]

    def update(label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= JSON_EVERY_S:
            last[0] = now
            print(json.dumps({"progress": label, "done": done, "total": total}), file=sys.stderr, flush=True)

    return update


def progress_bar(unit: str = "B") -> Callable[[str, int, int], None]:
    """tqdm bars on stderr (rate, ETA; bytes, or counted ``unit``s), one per file, made on its first report."""
    if os.environ.get("AUTOGLM_PROGRESS") == "json":
        return _json_lines()
    state: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = state.get("bar")
        if bar is None or label != state["label"] or done < bar.n or total != bar.total:  # a new file began
            if bar is not None:
                bar.close()
            state["label"] = label
            bar = state["bar"] = tqdm(total=total, initial=done, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
                                      desc=label if len(label) <= 40 else f"…{label[-39:]}", file=sys.stderr,
                                      disable=None)  # no bar when stderr is not a terminal (logs, pipes)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update
