"""File helpers every layer may use."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from autoglm.engine.errors import InvalidArgumentError, StorageError

# The disk or the system refused: the user's to fix (a read-only store, a full disk, permissions).
_REFUSALS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so readers see the old content or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide manifests from other users of a shared store
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def storage_error(exc: OSError) -> StorageError | None:
    """The one line a user needs for an OS refusal to write, or None when it is something else."""
    if exc.errno not in _REFUSALS:
        return None
    where = f" {exc.filename}" if exc.filename else ""
    hint = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only"}.get(exc.errno, "no permission to write there")
    return StorageError(f"cannot write{where}: {hint} (set AUTOGLM_HOME to a writable folder)")


def write_cache(path: Path, text: str) -> None:
    """A cache write that may fail (a read-only store): the cache is only an optimisation."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
    except OSError:
        pass


def read_user_text(path: str | Path, limit: int, what: str = "file") -> str:
    """A file the user named, read as UTF-8 text, bounded: a device (``/dev/zero``), a FIFO or a file
    over ``limit`` bytes is refused in one line before it can hold the process."""
    p = Path(path).expanduser()
    try:
        if p.exists() and not p.is_file():  # checked before opening: opening a FIFO waits for a writer
            raise InvalidArgumentError(f"{path} is not a regular file; give a {what}")
        with p.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InvalidArgumentError(f"{path} is over {limit:,} bytes; a {what} of at most that is taken")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{path} is not UTF-8 text (byte {exc.start})") from None
