"""Verifying drafts of a *sampled* stream without changing what it samples.

A drafted continuation is a point mass q = delta(d). The standard speculative-sampling rule
accepts d with probability min(1, p(d) / q(d)) = p(d) and, after a rejection, samples from the
residual max(0, p - q), normalized: p with d taken out. The token that comes out is then
distributed exactly as p, whatever the draft was, so speculation changes speed, never the
distribution. ``p`` must be the distribution llama.cpp's sampler chain draws from for the same
settings (top-k, then top-p on the untempered softmax, then temperature); a test compares the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autoglm.engine.sampling import SamplingParams

Dist = tuple[np.ndarray, np.ndarray]  # (token ids, their probabilities)


def target_dist(logits: np.ndarray, params: SamplingParams) -> Dist:
    """What ``top_k -> top_p(min_keep=1) -> temp -> dist`` samples from (see ``LlamaExecutor.sampler``)."""
    n = logits.shape[0]
    k = params.top_k if 0 < params.top_k < n else n
    ids = np.argpartition(-logits, k - 1)[:k] if k < n else np.arange(n)
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    z = logits[ids].astype(np.float64)
    if params.top_p < 1.0:
        p = np.exp(z - z[0])
        cum = np.cumsum(p / p.sum())
        last = min(int(np.searchsorted(cum, params.top_p)) + 1, len(ids))  # through the first with cum >= top_p
        ids, z = ids[:last], z[:last]
    q = np.exp((z - z[0]) / params.temperature)
    return ids, q / q.sum()


def draw(dist: Dist, rng: np.random.Generator) -> int:
    ids, p = dist
    return int(ids[min(int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right")), len(ids) - 1)])


def verify(draft: Sequence[int], dist_at: Callable[[int], Dist], rng: np.random.Generator) -> list[int]:
    """The tokens to emit for a drafted step: the accepted prefix of ``draft`` and one token drawn
    by the rule (a residual draw after a rejection, else from the distribution after the last
    draft). ``dist_at(i)`` is the target distribution at draft position i (i = len(draft): after
    it); it is asked only for the positions reached."""
    out: list[int] = []
    for i, token in enumerate(draft):
        ids, p = dist_at(i)
        hit = np.flatnonzero(ids == token)
        p_token = float(p[hit[0]]) if hit.size else 0.0
        if rng.random() < p_token:
            out.append(token)
            continue
        residual = p.copy()
        if hit.size:
            residual[hit[0]] = 0.0
        out.append(draw((ids, residual), rng))  # never the draft token: a rejection is always a change
        return out
    out.append(draw(dist_at(len(draft)), rng))
    return out
