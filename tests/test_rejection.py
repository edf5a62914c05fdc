"""Speculative sampling keeps the distribution: the rejection rule on a small vocabulary with fixed
seeds (fast), and the target distribution against llama.cpp's own sampler chain on real logits."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from autoglm.engine.sampling import SamplingParams
from autoglm.engine.scheduler.rejection import target_dist, verify

LOGITS = np.array([2.0, 1.5, 1.4, 0.3, -0.2, -1.0, -3.0, 0.9], dtype=np.float32)
PARAMS = SamplingParams(temperature=0.8, top_k=6, top_p=0.9)
N = 40_000


def _tv(counts: Counter, dist: tuple[np.ndarray, np.ndarray], n: int) -> float:
    """Total variation between the empirical counts and the distribution (0: identical)."""
    ids, p = dist
    expected = dict(zip(ids.tolist(), p.tolist(), strict=True))
    support = set(expected) | set(counts)
    return 0.5 * sum(abs(counts.get(t, 0) / n - expected.get(t, 0.0)) for t in support)


def test_target_dist_is_top_k_then_top_p_then_temperature():
    ids, p = target_dist(LOGITS, PARAMS)
    order = np.argsort(-LOGITS)[:6]  # top-6: 0, 1, 2, 7, 3, 4
    base = np.exp(LOGITS[order] - LOGITS[order].max())
    cum = np.cumsum(base / base.sum())
    keep = order[: int(np.argmax(cum >= 0.9)) + 1]  # through the first reaching 0.9
    assert ids.tolist() == keep.tolist()
    want = np.exp(LOGITS[keep] / 0.8)
    assert p == pytest.approx(want / want.sum())
    assert target_dist(LOGITS, SamplingParams(temperature=1.0, top_k=1)) [0].tolist() == [0]


@pytest.mark.parametrize("draft", [[0], [2], [4], [6], [0, 1], [2, 0, 7]])
def test_the_first_emitted_token_is_distributed_as_without_a_draft(draft):
    """Likely, unlikely, outside the top-p set (never accepted): whatever was drafted, the first
    token out follows the target distribution, and a rejection never emits the draft."""
    dist = target_dist(LOGITS, PARAMS)
    rng = np.random.default_rng(7)
    firsts: Counter = Counter()
    for _ in range(N):
        out = verify(draft, lambda i: dist, rng)
        firsts[out[0]] += 1
        rejected_at = next((i for i, t in enumerate(draft) if i >= len(out) - 1 or out[i] != t), None)
        if rejected_at is not None and rejected_at < len(draft):
            assert out[rejected_at] != draft[rejected_at]
    assert _tv(firsts, dist, N) < 0.01


def test_the_token_after_an_accepted_draft_follows_its_own_distribution():
    """Two positions with different distributions: given the first draft accepted, the second
    token out is distributed as the second position's target (the chain rule holds)."""
    first = target_dist(LOGITS, PARAMS)
    second = target_dist(LOGITS[::-1].copy(), SamplingParams(temperature=1.2, top_k=8, top_p=1.0))
    rng = np.random.default_rng(11)
    seconds: Counter = Counter()
    accepted = 0
    for _ in range(N):
        out = verify([1, 3], lambda i: first if i == 0 else second, rng)
        if out[0] == 1:
            accepted += 1
            seconds[out[1]] += 1
    assert accepted / N == pytest.approx(float(first[1][first[0].tolist().index(1)]), abs=0.01)
    assert _tv(seconds, second, accepted) < 0.015


def test_fixed_seeds_reproduce_the_same_draws():
    dist = target_dist(LOGITS, PARAMS)
    runs = [[verify([0, 1], lambda i: dist, np.random.default_rng(3)) for _ in range(1)] for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_target_dist_matches_llama_cpp_sampler_chain_on_real_logits(backend):
    """The rule is exact only if its p is what llama.cpp's chain draws from: sample the real chain
    (top-k 40, top-p 0.95, temperature 0.7, our defaults) many times on one real logits row and
    compare with ``target_dist`` on the same row."""
    from autoglm.engine.backends.llama_executor import LlamaExecutor
    from autoglm.engine.backends.llama_lib import llama_cpp

    executor = LlamaExecutor(backend.backend.model, n_seq=1, ctx_per_seq=64, n_batch=64, threads=1)
    try:
        prompt = backend.backend.tokenize("Once upon a time, in a small village by the sea, there")
        executor.decode([SimpleNamespace(token=t, pos=i, seq=0, logits=i == len(prompt) - 1)
                         for i, t in enumerate(prompt)])
        row = len(prompt) - 1
        params = SamplingParams(seed=5)
        dist = target_dist(np.array(executor.logits(row)), params)
        assert 3 <= len(dist[0]) <= 40  # a row where top-p and top-k both matter
        chain = executor.sampler(params)
        n = 6000
        counts = Counter(llama_cpp.llama_sampler_sample(chain, executor.ctx, row) for _ in range(n))
        executor.free_sampler(chain)
        assert _tv(counts, dist, n) < 0.03
    finally:
        executor.close()
