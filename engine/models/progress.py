"""Progress reports and cancellation for long model operations (downloads, joins, quantizing).

One callback shape serves the CLI's tqdm bars and the GUI's progress view: ``progress(label,
done, total)`` in bytes, called often; the receiver computes rate and ETA. A ``threading.Event``
cancels: the operation stops at its next chunk, raises :class:`CancelledError` and installs
nothing (a download keeps its partial file so the next pull resumes it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from autoglm.engine.errors import CancelledError

Progress = Callable[[str, int, int], None]


def check_cancel(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"{what} cancelled; nothing was installed")
