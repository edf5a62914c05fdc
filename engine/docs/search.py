"""Hybrid retrieval: keyword (BM25 over FTS5) and meaning (cosine over the embeddings) each rank
CANDIDATES passages, and reciprocal rank fusion merges the two lists: a passage high in either list
ranks high, one high in both ranks first, and no score scale has to be tuned between them
(Cormack et al., 2009; k = 60 as there).

An optional rerank step re-scores the fused top RERANK_CANDIDATES with the rerank use case's model
(``autoglm rerank``): worth it when that model is a stronger one than the collection's encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from autoglm.engine.backends.onnx.encoder import Encoder
from autoglm.engine.docs.index import DocIndex
from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.tasks.rerank import Ranked

# (query, passages) -> the passages ranked, as the rerank use case answers
Reranker = Callable[[str, list[str]], Sequence[Ranked]]

CANDIDATES = 50
RRF_K = 60
MAX_QUERY_CHARS = 2000
MAX_HITS = 50
RERANK_CANDIDATES = 20


@dataclass(frozen=True)
class Hit:
    path: str
    page: int | None
    heading: str
    text: str
    score: float  # fused: sum of 1 / (k + rank) over the lists it is in
    keyword_rank: int | None
    vector_rank: int | None
    similarity: float | None = None  # cosine to the query
    rerank_score: float | None = None  # the reranker's, when one ran (the order then follows it)

    def json(self) -> dict[str, object]:
        return {"path": self.path, "page": self.page, "heading": self.heading, "score": round(self.score, 6),
                "keyword_rank": self.keyword_rank, "vector_rank": self.vector_rank,
                "similarity": None if self.similarity is None else round(self.similarity, 4),
                "rerank_score": None if self.rerank_score is None else round(self.rerank_score, 4), "text": self.text}


def search(index: DocIndex, name: str, encoder: Encoder, query: str, k: int = 5,
           rerank: Reranker | None = None) -> list[Hit]:
    query = query.strip()
    if not query or len(query) > MAX_QUERY_CHARS:
        raise InvalidArgumentError(f"the query must be 1-{MAX_QUERY_CHARS} characters")
    if not 1 <= k <= MAX_HITS:
        raise InvalidArgumentError(f"the number of passages must be 1-{MAX_HITS}")
    index.collection(name)  # an unknown collection is its one-line error
    keyword = index.keyword(name, query, CANDIDATES)
    ids, vectors = index.matrix(name)
    vector: list[int] = []
    similarity: dict[int, float] = {}
    if len(ids):
        scores = vectors @ encoder.embed([query])[0][0]
        top = np.argsort(-scores)[:CANDIDATES]
        vector = [int(ids[i]) for i in top]
        similarity = {int(c): float(v) for c, v in zip(ids, scores, strict=True)}
    fused: dict[int, float] = {}
    for ranking in (keyword, vector):
        for rank, chunk_id in enumerate(ranking):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
    best = sorted(fused, key=lambda c: -fused[c])[:max(k, RERANK_CANDIDATES) if rerank else k]
    passages = index.passages(best)
    krank = {c: i + 1 for i, c in enumerate(keyword)}
    vrank = {c: i + 1 for i, c in enumerate(vector)}
    hits = [Hit(passages[c].path, passages[c].page, passages[c].heading, passages[c].text, fused[c],
                krank.get(c), vrank.get(c), similarity.get(c)) for c in best if c in passages]
    if rerank is not None and hits:
        ranked = rerank(query, [f"{h.heading}\n{h.text}" if h.heading else h.text for h in hits])
        hits = [replace(hits[r.index], rerank_score=r.score) for r in ranked]
    return hits[:k]


def search_collection(name: str, query: str, k: int, encoder: Callable[[str], Encoder],
                      index: DocIndex | None = None, rerank: Reranker | None = None) -> list[Hit]:
    """The search use case, once for the CLI, the Python API and the server: the collection's own
    encoder (``encoder(name)`` opens it), the index in the data folder, and the caller's reranker."""
    own = index is None
    index = index or DocIndex()
    try:
        _roots, encoder_name = index.collection(name)
        return search(index, name, encoder(encoder_name), query, k, rerank)
    finally:
        if own:
            index.close()
