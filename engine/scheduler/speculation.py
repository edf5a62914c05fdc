"""Drafts for speculative decoding from the sequence itself (prompt lookup): no second model.

When the reply copies from its context (rewriting a text, extracting fields, editing code), the
tokens after the last few generated ones have usually appeared before: those that followed them
then are the draft. The scheduler verifies a draft inside the same batch as every other stream
and keeps the longest prefix that the model itself would have produced, so greedy text is
unchanged. Kept per slot: an index of n-grams -> where they last continued, grown as tokens come.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NGRAMS = (4, 3)  # longest match first; a 2-gram ("of the") predicts too little to pay
MAX_K = 10
PRIOR_ACCEPTED, PRIOR_REJECTED = 2.0, 1.0  # a new sequence's drafts: assumed two-thirds acceptable
PAUSE_TOKENS = 48  # not drafting for this long: forget what was learnt (the text may turn to copying)
PRIOR_ROW_COST = 0.3  # an extra row's cost relative to a one-row step, until steps are measured


def best_k(p: float, row_cost: float, limit: int, rows: int = 1) -> int:
    """The draft length that makes the step yield the most tokens per unit of time. The step
    already holds ``rows`` rows (one per running stream, drafts already added); ``k`` drafts each
    accepted with probability ``p`` (until the first miss) add ``p + ... + p^k`` tokens to its
    ``rows`` for ``row_cost * k`` more time (a step costs ``1 + row_cost * rows``). Alone, an
    extra row must be likely; in a full batch it must be nearly certain, since it slows every
    stream's step."""
    best, best_rate = 0, rows / (1.0 + row_cost * rows)
    gain, term = float(rows), 1.0
    for k in range(1, min(limit, MAX_K) + 1):
        term *= p
        gain += term
        rate = gain / (1.0 + row_cost * (rows + k))
        if rate > best_rate:
            best, best_rate = k, rate
    return best


class StepCost:
    """What one more row costs relative to a step's fixed cost: on a GPU an extra row is almost
    free and drafts are long; on a small CPU with plain kernels it costs about a whole step and
    only drafts that are nearly always accepted pay. Measured as it runs: each step without drafts
    keeps the time of a step of that many rows; each step with drafts compares itself with it.
    Slowly averaged, so one noisy step (another process took the cores) cannot switch drafting
    off for good."""

    def __init__(self, weight: float = 0.1) -> None:
        self.weight = weight
        self.plain: dict[int, float] = {}  # rows -> recent time of a step without drafts
        self.rho = PRIOR_ROW_COST

    def observe(self, rows: int, seconds: float, drafted: int = 0) -> None:
        base_rows = rows - drafted
        base = self.plain.get(base_rows)
        if not drafted:
            self.plain[base_rows] = seconds if base is None else base + 0.2 * (seconds - base)
            return
        if base is None:
            return
        per_row = max(seconds - base, 0.0) / drafted
        fixed = base - per_row * base_rows
        if fixed > 0:
            sample = min(per_row / fixed, 5.0)
            self.rho += self.weight * (sample - self.rho)

    def ratio(self) -> float:
        return self.rho


@dataclass
class Drafter:
    index: dict[tuple[int, ...], int] = field(default_factory=dict)
    indexed: int = 0  # tokens of the sequence whose n-grams (ending before the last) are indexed
    accepted_w: float = PRIOR_ACCEPTED  # accepted drafted tokens, with the prior
    rejected_w: float = PRIOR_REJECTED  # drafts that ended in a rejection, with the prior
    idle: int = 0  # tokens since the last draft

    def reset(self) -> None:
        self.index.clear()
        self.indexed, self.idle = 0, 0
        self.accepted_w, self.rejected_w = PRIOR_ACCEPTED, PRIOR_REJECTED

    @property
    def p(self) -> float:
        """Per drafted token, the chance the model agrees (a truncated geometric's estimate)."""
        return self.accepted_w / (self.accepted_w + self.rejected_w)

    def _grow(self, tokens: list[int]) -> None:
        # n-grams ending at e (e < len - 1) map to e + 1, where their continuation starts
        for end in range(max(self.indexed - 1, 0), len(tokens) - 1):
            for n in NGRAMS:
                if end + 1 >= n:
                    self.index[tuple(tokens[end + 1 - n:end + 1])] = end + 1
        self.indexed = len(tokens)

    def length(self, limit: int, row_cost: float = PRIOR_ROW_COST, rows: int = 1) -> int:
        """How many tokens to draft this step (0: none) at this acceptance rate and row cost."""
        self.idle += 1
        if self.idle > PAUSE_TOKENS:
            self.accepted_w, self.rejected_w, self.idle = PRIOR_ACCEPTED, PRIOR_REJECTED, 0
        return best_k(self.p, row_cost, limit, rows)

    def draft(self, tokens: list[int], limit: int, row_cost: float = PRIOR_ROW_COST, rows: int = 1) -> list[int]:
        """The tokens that followed the latest earlier occurrence of the sequence's last n-gram, as
        many as pay at this acceptance rate and row cost, or none."""
        want = self.length(limit, row_cost, rows)
        if want <= 0:
            return []
        self._grow(tokens)
        for n in NGRAMS:
            start = self.index.get(tuple(tokens[-n:])) if len(tokens) > n else None
            if start is not None:
                return tokens[start:start + want]
        return []

    def observe(self, drafted: int, accepted: int) -> None:
        self.idle = 0
        self.accepted_w += accepted
        self.rejected_w += accepted < drafted
