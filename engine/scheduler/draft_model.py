"""Drafts from a smaller model with the same vocabulary (``--draft MODEL``).

Its own llama.cpp context holds one KV sequence per slot, mirroring the tokens the target has
accepted; before drafting, each sequence is brought level with its slot (rejected drafts' cells
dropped, new tokens evaluated), then all drafting slots advance together, one batched step per
drafted position, each taking its argmax. The drafts are a deterministic function of the context,
so the target verifies them exactly as prompt-lookup drafts (argmax at temperature 0, the
rejection rule with a point-mass draft when sampling): the text, or its distribution, is the
target's alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.sampling import SamplingParams

VOCAB_CHECKED = 4096  # token texts compared one by one (plus the size and the specials); all would cost ~0.2 s


@dataclass(frozen=True)
class DraftRow:
    token: int
    pos: int
    seq: int
    logits: bool


def check_vocab(target: Any, draft: Any, target_name: str, draft_name: str) -> None:
    """Drafts are token ids: the two models must mean the same text by each. Same size, same
    texts for the first ids and the end-of-text token, else one line saying so."""
    n_t, n_d = target.n_vocab, draft.n_vocab
    if n_t != n_d:
        raise InvalidArgumentError(f"the draft model {draft_name} has a vocabulary of {n_d} tokens, {target_name} "
                                   f"{n_t}: a draft model must share the target's vocabulary (same family)")
    ids = [*range(min(n_t, VOCAB_CHECKED)), target.eos, n_t - 1]
    differ = next((i for i in ids if target.token_text(i) != draft.token_text(i)), None)
    if differ is not None or target.eos != draft.eos:
        raise InvalidArgumentError(f"the draft model {draft_name} tokenizes differently from {target_name} "
                                   f"(token {differ if differ is not None else 'end-of-text'} differs): a draft model "
                                   "must share the target's vocabulary")


def one_row_step(executor: Any, runs: int = 3, rows: int = 1) -> float:
    """The fastest of a few steps of ``rows`` tokens (each with logits, as a verifying step has)
    on sequence 0, its cells dropped after each."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        executor.decode([DraftRow(0, i, 0, True) for i in range(rows)])
        best = min(best, time.perf_counter() - started)
        executor.trim(0, 0)
    return best


class ModelDrafter:
    """The draft model's side of speculation; used from the scheduler thread only."""

    def __init__(self, executor: Any, keep: Any = None) -> None:
        self.executor, self.keep = executor, keep  # keep: the loaded draft model, alive as long as its context
        self.greedy = executor.sampler(SamplingParams(temperature=0))
        self.mirror: dict[int, list[int]] = {}  # seq -> tokens with cells in the draft context
        self.step_s: float | None = None  # recent time of one batched draft step (for the step cost)

    def calibrate(self, runs: int = 3) -> None:
        """Time one-token draft steps before serving: without a measured draft cost the planner
        would have to guess it, and a pessimistic guess would never draft, so never measure it."""
        self.step_s = one_row_step(self.executor, runs)
        self.mirror.pop(0, None)

    def clear(self) -> None:
        self.executor.clear()
        self.mirror.clear()

    def _level(self, seq: int, tokens: list[int]) -> list[int]:
        """Drop cells past the common prefix; return what is left to evaluate (at least the last token)."""
        have = self.mirror.get(seq, [])
        keep = 0
        for a, b in zip(have, tokens, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)
        self.executor.trim(seq, keep)
        self.mirror[seq] = tokens[:keep]
        return tokens[keep:]

    def _decode(self, rows: Sequence[DraftRow]) -> None:
        self.executor.decode(rows)
        for row in rows:
            self.mirror[row.seq].append(row.token)

    def propose(self, asks: list[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        """[(seq, its tokens, k)] -> up to k greedy draft tokens per sequence."""
        n_batch = self.executor.n_batch
        last: dict[int, DraftRow] = {}
        for seq, tokens, _ in asks:  # catch up: a new prompt, accepted tokens, the latest input
            pending = self._level(seq, tokens)
            start = len(tokens) - len(pending)
            head = [DraftRow(t, start + i, seq, False) for i, t in enumerate(pending[:-1])]
            for i in range(0, len(head), n_batch):
                self._decode(head[i:i + n_batch])
            last[seq] = DraftRow(pending[-1], len(tokens) - 1, seq, True)
        drafts: dict[int, list[int]] = {seq: [] for seq, _, _ in asks}
        want = {seq: k for seq, _, k in asks}
        rows = list(last.values())
        while rows:
            started = time.perf_counter()
            self._decode(rows)
            picked = self.executor.sample_all([(self.greedy, i) for i in range(len(rows))])
            took = time.perf_counter() - started
            self.step_s = took if self.step_s is None else self.step_s + 0.2 * (took - self.step_s)
            following = []
            for row, token in zip(rows, picked, strict=True):
                drafts[row.seq].append(token)
                if len(drafts[row.seq]) < want[row.seq] and not self.executor.is_eog(token):
                    following.append(DraftRow(token, row.pos + 1, row.seq, True))
            rows = following
        return drafts
