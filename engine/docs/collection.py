"""Adding and syncing a collection: only files whose bytes changed are read, chunked and embedded
again; files gone from disk (or now unreadable) leave the index. Each file is its own transaction,
so a run killed at any point is finished by the next ``sync``."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoglm.engine.backends.onnx.encoder import Encoder
from autoglm.engine.docs.chunk import chunk
from autoglm.engine.docs.files import Skipped, Unreadable, read, walk
from autoglm.engine.docs.index import DocIndex
from autoglm.engine.errors import InvalidArgumentError

EMBED_BATCH = 64


@dataclass
class Report:
    indexed: list[str] = field(default_factory=list)  # read, chunked and embedded now
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    chunks: int = 0
    cancelled: bool = False


Said = Callable[[str, str], None]  # (path, what happened): one line each, for progress


def sync(index: DocIndex, name: str, encoder_name: str, encoder: Encoder, roots: list[Path] | None = None,
         said: Said | None = None, cancel: threading.Event | None = None) -> Report:
    """Add ``roots`` to the collection (made if new), then bring it up to date with the disk.
    ``cancel``: stop between files (what is indexed stays; files not seen yet are not dropped)."""
    check_roots(roots or [])
    index.ensure(name, [str(r.resolve()) for r in roots or []], encoder_name)
    stored_roots, _ = index.collection(name)
    known = index.files(name)
    report, present = Report(), set()
    tell = said or (lambda _path, _what: None)
    for found in walk([Path(r) for r in stored_roots]):
        if cancel is not None and cancel.is_set():
            report.cancelled = True
            return report
        if isinstance(found, Skipped):
            report.skipped.append(found)
            tell(str(found.path), f"skipped: {found.reason}")
            continue
        key = str(found)
        present.add(key)
        try:
            state = found.stat()
            row = known.get(key)
            if row is not None and row.size == state.st_size and row.mtime == state.st_mtime:
                report.unchanged += 1
                continue
            digest = _sha256(found)
            if row is not None and row.sha256 == digest:  # touched, not changed
                index.touch_file(name, key, state.st_size, state.st_mtime)
                report.unchanged += 1
                continue
            chunks = chunk(read(found))
        except (Unreadable, OSError) as exc:
            reason = str(exc) if isinstance(exc, Unreadable) else f"cannot be read ({exc.strerror})"
            report.skipped.append(Skipped(found, reason))
            present.discard(key)  # an unreadable file leaves the index: its old text is no longer what it says
            tell(key, f"skipped: {reason}")
            continue
        texts = [f"{c.heading}\n{c.text}" if c.heading else c.text for c in chunks]
        vectors = encoder.embed(texts)[0] if texts else None
        if vectors is None:
            continue
        index.replace_file(name, key, state.st_size, state.st_mtime, digest, chunks, vectors)
        report.indexed.append(key)
        report.chunks += len(chunks)
        tell(key, f"indexed: {len(chunks)} chunks")
    for gone in sorted(set(known) - present):
        index.drop_file(name, gone)
        report.removed.append(gone)
        tell(gone, "removed: no longer on disk (or no longer readable)")
    return report


def check_roots(roots: list[Path]) -> None:
    """A typo is one line, before an encoder is opened (a first one is pulled) or an empty
    collection made: at least one of the paths given must exist."""
    if roots and not any(r.exists() for r in roots):
        raise InvalidArgumentError(f"nothing to add: {', '.join(str(r) for r in roots[:3])} "
                                   f"{'does' if len(roots) == 1 else 'do'} not exist")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
