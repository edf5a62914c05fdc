"""Drafts for speculative decoding from the sequence itself (prompt lookup): no second model.

When the reply copies from its context (rewriting a text, extracting fields, editing code), the
tokens after the last few generated ones have usually appeared before: those that followed them
then are the draft. The scheduler verifies a draft inside the same batch as every other stream
and keeps the longest prefix that the model itself would have produced, so greedy text is
unchanged. Kept per slot: an index of n-grams -> where they last continued, grown as tokens come.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NGRAMS = (4, 3, 2)  # longest match first: fewer, better drafts
START_K, MAX_K = 4, 10
OFF_AFTER_MISSES = 3  # drafts of one that fail this often in a row: pause speculation
PAUSE_TOKENS = 48  # ...for this many tokens, then try again (the text may turn to copying)


@dataclass
class Drafter:
    index: dict[tuple[int, ...], int] = field(default_factory=dict)
    indexed: int = 0  # tokens of the sequence whose n-grams (ending before the last) are indexed
    k: int = START_K
    misses: int = 0
    paused_until: int = 0  # the sequence length from which drafting resumes
    drafted: int = 0
    accepted: int = 0

    def reset(self) -> None:
        self.index.clear()
        self.indexed, self.k, self.misses, self.paused_until = 0, START_K, 0, 0

    def _grow(self, tokens: list[int]) -> None:
        # n-grams ending at e (e < len - 1) map to e + 1, where their continuation starts
        for end in range(max(self.indexed - 1, 0), len(tokens) - 1):
            for n in NGRAMS:
                if end + 1 >= n:
                    self.index[tuple(tokens[end + 1 - n:end + 1])] = end + 1
        self.indexed = len(tokens)

    def draft(self, tokens: list[int], limit: int) -> list[int]:
        """Up to ``min(k, limit)`` tokens that followed the latest earlier occurrence of the
        sequence's last n-gram, or none."""
        if limit <= 0 or len(tokens) < self.paused_until:
            return []
        self._grow(tokens)
        want = min(self.k, limit)
        for n in NGRAMS:
            start = self.index.get(tuple(tokens[-n:])) if len(tokens) > n else None
            if start is not None:
                return tokens[start:start + want]
        return []

    def observe(self, drafted: int, accepted: int, length: int) -> None:
        """Adapt the draft length to what is accepted; pause where drafts keep failing."""
        self.drafted += drafted
        self.accepted += accepted
        if accepted == drafted:
            self.k, self.misses = min(MAX_K, self.k + 2), 0
        elif accepted == 0:
            self.k = max(1, self.k // 2)
            self.misses += 1
            if self.misses >= OFF_AFTER_MISSES:
                self.paused_until, self.misses, self.k = length + PAUSE_TOKENS, 0, START_K
        else:
            self.k, self.misses = max(1, accepted + 1), 0
