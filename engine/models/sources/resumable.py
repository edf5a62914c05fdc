"""HTTP downloads that resume across processes, through huggingface_hub's own HTTP session.

Why not ``hf_hub_download``: since huggingface_hub 1.x each attempt writes a process-unique
``<etag>.<uuid>.incomplete`` opened for writing from zero, so a download resumes after a dropped
connection but restarts after a kill, a crash or a closed laptop lid, which is exactly when a user
on a slow link needs it. Here the partial file has a stable name (the expected sha256, else a
hash of the URL) under the store's tmp dir and every received chunk is written to it at once, so
the next pull, in any process, asks for ``Range: bytes=<size on disk>-``. The session is
huggingface_hub's (``get_session``), so proxies, HF_TOKEN headers and its transport settings apply;
HTTP errors go through ``hf_raise_for_status`` so they keep the Hub's error classes.
"""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from pathlib import Path

from autoglm.engine import paths
from autoglm.engine.errors import IntegrityError, NetworkError, StorageError
from autoglm.engine.models.progress import Progress, check_cancel
from autoglm.engine.models.store import CHUNK, sha256_file

RETRIES = 5  # consecutive attempts without new bytes before giving up
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


def partial_path(url: str, sha256: str | None) -> Path:
    key = sha256 or hashlib.sha256(url.encode()).hexdigest()
    directory = paths.tmp_dir() / "downloads"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{key}.part"


def _stream_once(url: str, part: Path, headers: dict[str, str], size: int | None, label: str,
                 progress: Progress | None, cancel: threading.Event | None) -> None:
    from huggingface_hub.utils import get_session, hf_raise_for_status

    have = part.stat().st_size if part.exists() else 0
    request_headers = dict(headers)
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with get_session().stream("GET", url, headers=request_headers, follow_redirects=True) as response:
        if response.status_code == 416 and size is not None and have >= size:
            return  # everything was already here
        hf_raise_for_status(response)
        mode = "ab" if have and response.status_code == 206 else "wb"  # a 200 ignores Range: start over
        done = have if mode == "ab" else 0
        with part.open(mode, buffering=0) as fh:  # unbuffered: what we received survives a kill
            for chunk in response.iter_bytes(CHUNK):
                check_cancel(cancel, f"download of {label}")
                fh.write(chunk)
                done += len(chunk)
                if progress:
                    progress(label, done, size or done)


def download(url: str, headers: dict[str, str], *, size: int | None, sha256: str | None, label: str,
             progress: Progress | None = None, cancel: threading.Event | None = None) -> Path:
    """Fetch ``url`` into its partial file, resuming what is there; returns the checked file.

    A file whose sha256 does not match is deleted (so the next pull starts clean) and raises.
    """
    part = partial_path(url, sha256)
    if size is not None and part.exists() and part.stat().st_size > size:
        part.unlink()  # longer than the file can be: not ours to trust
    failures = 0
    while size is None or not part.exists() or part.stat().st_size < size:
        check_cancel(cancel, f"download of {label}")
        before = part.stat().st_size if part.exists() else 0
        try:
            _stream_once(url, part, headers, size, label, progress, cancel)
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
                raise StorageError(f"cannot write {part}: {exc.strerror}") from None
            if not _transient(exc):
                raise
        if size is None:
            break
        gained = (part.stat().st_size if part.exists() else 0) > before
        failures = 0 if gained else failures + 1
        if failures >= RETRIES:
            raise NetworkError(f"download of {label} keeps failing; pull again to resume where it stopped")
        if not gained:
            time.sleep(min(2 ** failures, 10))
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise IntegrityError(f"{label}: got {got} bytes, expected {size}")
    if sha256 and sha256_file(part) != sha256:
        part.unlink()
        raise IntegrityError(f"{label}: downloaded bytes do not match the source's sha256; nothing installed")
    return part


def _transient(exc: Exception) -> bool:
    """Connections dropped mid-file and read timeouts are worth a ranged retry; HTTP errors (404,
    401) and failing to connect at all (no network, wrong endpoint) are not: they fail at once."""
    from huggingface_hub.errors import HfHubHTTPError

    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, HfHubHTTPError) or names & {"ConnectError", "ConnectTimeout", "ProxyError"}:
        return False
    return isinstance(exc, OSError) or bool(names & {
        "TransportError", "ConnectionError", "TimeoutException", "ChunkedEncodingError", "ProtocolError"})
