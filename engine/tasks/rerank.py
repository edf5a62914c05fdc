"""Rerank: documents ordered by relevance to a query, as retrieval pipelines ask before they
put the best few into a prompt. Scored with the sentence-embedding model (cosine of unit
vectors): a bi-encoder, not a cross-encoder, which reads query and document together and ranks
better; no cross-encoder ships on the package index this project installs from, so none is
offered until one can be tested. Every answer says which method ran."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoglm.engine.errors import InvalidArgumentError

MAX_DOCUMENTS = 1000  # one request's encoder work; more is a job for an index (docs RAG)
METHOD = "embedding"


@dataclass(frozen=True)
class Ranked:
    index: int  # the document's place in the request
    score: float  # cosine similarity to the query, -1..1
    text: str


def check(query: str, documents: list[str]) -> None:
    if not query.strip():
        raise InvalidArgumentError("the query is empty")
    if not documents:
        raise InvalidArgumentError("documents must not be empty")
    if len(documents) > MAX_DOCUMENTS:
        raise InvalidArgumentError(f"at most {MAX_DOCUMENTS} documents per request, got {len(documents)}")
    if not all(isinstance(d, str) and d.strip() for d in documents):
        raise InvalidArgumentError("every document must be non-empty text")


def rank(query_vector: np.ndarray, document_vectors: np.ndarray, documents: list[str],
         top_n: int | None = None) -> list[Ranked]:
    """Most relevant first (ties keep the request's order); ``top_n`` keeps that many."""
    if top_n is not None and top_n < 1:
        raise InvalidArgumentError(f"top_n must be at least 1, got {top_n}")
    scores = document_vectors @ query_vector
    order = sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))
    return [Ranked(i, float(scores[i]), documents[i]) for i in order[:top_n]]
