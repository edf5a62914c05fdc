"""The document index: one SQLite file in the data folder (WAL), no server.

- ``chunks`` holds each passage with its file, heading and page, and its embedding as a float32
  BLOB; ``chunks_fts`` (FTS5, kept in step by triggers) ranks them by keywords (BM25).
- Vector search is an exact scan in numpy over the collection's matrix, read once and kept until
  the collection changes. Why not sqlite-vec: its KNN is a scan too, and loading it needs an
  SQLite with extension loading, which many Pythons (this machine's pyenv build, macOS's) leave
  out; 10,000 chunks of 384 floats are 15 MB and a scan of them takes about a millisecond.
- A file is replaced in one transaction (its old chunks out, its new ones in), so a process killed
  mid-index leaves each file either as it was or as it is: ``sync`` then finishes the rest.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoglm.engine import paths
from autoglm.engine.docs.chunk import Chunk
from autoglm.engine.errors import InvalidArgumentError, ModelNotFoundError

if TYPE_CHECKING:  # numpy is imported where vectors are handled: `autoglm --help` imports this module
    import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY, roots TEXT NOT NULL, encoder TEXT NOT NULL, created REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL, sha256 TEXT NOT NULL,
    UNIQUE (collection, path));
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, file INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL, text TEXT NOT NULL, heading TEXT NOT NULL, page INTEGER, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_file ON chunks(file);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, heading, content='chunks', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS chunks_in AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading); END;
CREATE TRIGGER IF NOT EXISTS chunks_out AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) VALUES ('delete', old.id, old.text, old.heading); END;
"""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_WORDS = 32
# (index file, collection) -> (its version, chunk ids, unit vectors): read once per change, per process
_MATRICES: dict[tuple[str, str], tuple[int, np.ndarray, np.ndarray]] = {}
_LOCK = threading.Lock()
# words too common to say what a question is about: matched, they would make every passage a keyword hit
STOP_WORDS = frozenset("""a about above after again all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having he her
here hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or other
our out over own same she should so some such than that the their them then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you your""".split())


@dataclass(frozen=True)
class FileRow:
    id: int
    path: str
    size: int
    mtime: float
    sha256: str


@dataclass(frozen=True)
class Passage:
    id: int
    path: str
    text: str
    heading: str
    page: int | None


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgumentError(f"collection name {name[:80]!r}: use letters, digits, '.', '_' or '-' "
                                   "(at most 64, starting with a letter or digit)")
    return name


class DocIndex:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.home() / "documents.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        if "version" not in {row[1] for row in self.db.execute("PRAGMA table_info(collections)")}:
            self.db.execute("ALTER TABLE collections ADD COLUMN version INTEGER NOT NULL DEFAULT 0")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> DocIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- collections ----------------------------------------------------------------------------
    def collection(self, name: str) -> tuple[list[str], str]:
        """Its roots and encoder; a name never added is a one-line error."""
        row = self.db.execute("SELECT roots, encoder FROM collections WHERE name = ?", (check_name(name),)).fetchone()
        if row is None:
            known = ", ".join(self.names()) or "none yet"
            raise ModelNotFoundError(f"no document collection {name!r} (collections: {known}); "
                                     "`autoglm docs add PATH --collection NAME` makes one")
        return list(json.loads(row[0])), str(row[1])

    def names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM collections ORDER BY name")]

    def ensure(self, name: str, roots: list[str], encoder: str) -> None:
        """The collection, made if new; ``roots`` join the ones it has."""
        check_name(name)
        row = self.db.execute("SELECT roots, encoder FROM collections WHERE name = ?", (name,)).fetchone()
        if row is None:
            # versions start from the clock: a collection removed and made again under its name (by
            # another process, say) never matches a matrix cached for the old one
            self.db.execute("INSERT INTO collections(name, roots, encoder, created, version) VALUES (?, ?, ?, ?, ?)",
                            (name, json.dumps(roots), encoder, time.time(), time.time_ns()))
            return
        if row[1] != encoder:
            raise InvalidArgumentError(f"collection {name!r} was indexed with {row[1]}; its vectors cannot be "
                                       f"mixed with {encoder}'s (`autoglm docs rm {name}` and add again)")
        merged = list(dict.fromkeys([*json.loads(row[0]), *roots]))
        self.db.execute("UPDATE collections SET roots = ? WHERE name = ?", (json.dumps(merged), name))

    def remove(self, name: str) -> None:
        self.collection(name)
        with self._tx():
            self.db.execute("DELETE FROM collections WHERE name = ?", (name,))
        with _LOCK:
            _MATRICES.pop((str(self.path), name), None)

    def summary(self) -> list[dict[str, object]]:
        rows = self.db.execute(
            "SELECT c.name, c.encoder, c.roots, COUNT(DISTINCT f.id), COUNT(k.id) FROM collections c "
            "LEFT JOIN files f ON f.collection = c.name LEFT JOIN chunks k ON k.file = f.id GROUP BY c.name "
            "ORDER BY c.name")
        return [{"name": n, "encoder": e, "roots": json.loads(r), "files": f, "chunks": k} for n, e, r, f, k in rows]

    # --- files ----------------------------------------------------------------------------------
    def files(self, name: str) -> dict[str, FileRow]:
        rows = self.db.execute("SELECT id, path, size, mtime, sha256 FROM files WHERE collection = ?", (name,))
        return {r[1]: FileRow(*r) for r in rows}

    def replace_file(self, name: str, path: str, size: int, mtime: float, digest: str, chunks: list[Chunk],
                     vectors: np.ndarray) -> None:
        """The file's chunks, all or none (one transaction)."""
        import numpy as np

        with self._tx():
            self._changed(name)
            self.db.execute("DELETE FROM files WHERE collection = ? AND path = ?", (name, path))
            file_id = self.db.execute("INSERT INTO files(collection, path, size, mtime, sha256) VALUES (?,?,?,?,?)",
                                      (name, path, size, mtime, digest)).lastrowid
            self.db.executemany("INSERT INTO chunks(file, ord, text, heading, page, vector) VALUES (?,?,?,?,?,?)",
                                [(file_id, i, c.text, c.heading, c.page, v.astype(np.float32).tobytes())
                                 for i, (c, v) in enumerate(zip(chunks, vectors, strict=True))])

    def touch_file(self, name: str, path: str, size: int, mtime: float) -> None:
        """Same bytes, new time stamp: nothing to embed again."""
        self.db.execute("UPDATE files SET size = ?, mtime = ? WHERE collection = ? AND path = ?",
                        (size, mtime, name, path))

    def drop_file(self, name: str, path: str) -> None:
        with self._tx():
            self._changed(name)
            self.db.execute("DELETE FROM files WHERE collection = ? AND path = ?", (name, path))

    def _changed(self, name: str) -> None:
        """Its vectors changed (inside the transaction that changes them): cached matrices are stale."""
        self.db.execute("UPDATE collections SET version = version + 1 WHERE name = ?", (name,))

    # --- search ---------------------------------------------------------------------------------
    def keyword(self, name: str, query: str, k: int) -> list[int]:
        """Chunk ids, best first, by BM25 over the query's words (any of them; quoted, so no FTS syntax
        a user typed can fail or run wild)."""
        words = [w for w in _WORD.findall(query) if w.lower() not in STOP_WORDS][:MAX_QUERY_WORDS]
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', "") + '"' for w in words)
        rows = self.db.execute(
            "SELECT chunks_fts.rowid FROM chunks_fts JOIN chunks ON chunks.id = chunks_fts.rowid "
            "JOIN files ON files.id = chunks.file WHERE chunks_fts MATCH ? AND files.collection = ? "
            "ORDER BY bm25(chunks_fts) LIMIT ?", (match, name, k))
        return [r[0] for r in rows]

    def matrix(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, their unit vectors as rows), read once per change of the collection."""
        import numpy as np

        row = self.db.execute("SELECT version FROM collections WHERE name = ?", (name,)).fetchone()
        version = row[0] if row else -1  # one row read per search, not a count over every chunk
        key = (str(self.path), name)
        with _LOCK:  # shared by every DocIndex of the process: the server opens one per request
            cached = _MATRICES.get(key)
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            rows = self.db.execute("SELECT k.id, k.vector FROM chunks k JOIN files f ON f.id = k.file "
                                   "WHERE f.collection = ? ORDER BY k.id", (name,)).fetchall()
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = (np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
                       if rows else np.zeros((0, 0), np.float32))
            _MATRICES[key] = (version, ids, vectors)
            return ids, vectors

    def passages(self, ids: list[int]) -> dict[int, Passage]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT k.id, f.path, k.text, k.heading, k.page FROM chunks k JOIN files f "
                               f"ON f.id = k.file WHERE k.id IN ({marks})", ids)
        return {r[0]: Passage(*r) for r in rows}

    def check(self) -> list[str]:
        """What is wrong with the file (empty: nothing): SQLite's own check and the FTS index's."""
        problems = [r[0] for r in self.db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        try:
            self.db.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
        except sqlite3.DatabaseError as exc:
            problems.append(f"keyword index: {exc}")
        return problems

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if kind else "COMMIT")
