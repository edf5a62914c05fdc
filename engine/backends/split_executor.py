"""Long steps (prompt chunks, long drafts) on the model's plain weights, short ones on its repacked weights.

llama.cpp repacks quantized weights (its "extra buffer types") for faster matrix-vector products,
and on some CPUs its repacked matrix-matrix kernels are slower than the plain ones. On a 2-core
AVX-512 EPYC with Qwen2.5-Coder-1.5B Q4_K_M: repacked, prefill 104 tok/s and decode 30.3; plain,
145 and 23.9. One weight layout per model can have one of the two. Two loads of the same file can
have both: this executor runs a sequence's rows on a context over the plain weights when a step
has 32 or more of them (prompt chunks, long verified drafts) and on a context over the repacked
weights otherwise (decode steps, short drafts). Each keeps its own KV cells; a sequence's cells are copied
(``llama_state_seq_*``: about 8 ms for 10 MB, 360 tokens of the 1.5B) to the context a step runs
on when the other one wrote newer cells. The planner turns it on only where `autoglm tune`
measured the gain and memory holds both copies (``Plan.split_prompt``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autoglm.engine.backends.llama_executor import RowLike

# Below this many rows of one sequence in a step the repacked weights are faster (the 1.5B, 2 AVX-512 cores,
# 300 cells, best of 3: 8 rows 242 ms repacked / 332 ms plain, 16 rows 301 / 346, 24 rows 470 / 449, 32 rows
# 492 / 485, 48 rows 741 / 644, 63 rows 1045 / 795): short drafts stay, long drafts and prompt chunks move.
MIN_ROWS = 32


class SplitExecutor:
    def __init__(self, prompt: Any, decode: Any, keep: Any = None, min_rows: int = MIN_ROWS) -> None:
        """``keep``: what must outlive the prompt context (its loaded model); ``min_rows``: a sequence
        with at least this many rows in a step runs them on the plain weights."""
        if (prompt.n_seq, prompt.n_batch) != (decode.n_seq, decode.n_batch):
            raise ValueError("the two contexts must hold the same sequences and batch")
        self.prompt, self.decoder = prompt, decode
        self.n_seq, self.n_batch = prompt.n_seq, prompt.n_batch
        self.newer: dict[int, Any] = {}  # sequence -> the context with cells the other lacks
        self._where: list[tuple[int, int]] = []  # by row of the last step: (0 repacked / 1 plain, its row there)
        self._logit_rows: list[int] = []
        self.copies = 0  # sequences copied between the contexts (for benchmarks and tests)
        self.keep, self.min_rows = keep, min_rows

    def _sync(self, seq: int, target: Any) -> None:
        source = self.newer.pop(seq, None)
        if source is not None and source is not target:
            target.load_seq(seq, source.save_seq(seq))
            self.copies += 1

    # --- the executor interface (see LlamaExecutor) ------------------------------------------
    def trim(self, seq: int, keep: int) -> None:
        """Both contexts, or only the one with newer cells: the other's are replaced whole before its
        next step on this sequence."""
        newer = self.newer.get(seq)
        for ex in (self.prompt, self.decoder):
            if newer is None or ex is newer:
                ex.trim(seq, keep)

    def decode(self, rows: Sequence[RowLike]) -> None:
        """Rows of sequences with few rows in the step on the repacked context, rows of sequences
        with ``min_rows`` or more on the plain one: a step with both (streams decoding beside a prompt
        chunk or a long verified draft) is two llama.cpp calls, so running streams never move their cells."""
        count: dict[int, int] = {}
        for row in rows:
            count[row.seq] = count.get(row.seq, 0) + 1
        parts: dict[int, list[RowLike]] = {0: [], 1: []}  # 0: repacked (few rows), 1: plain (min_rows or more)
        self._where = []
        self._logit_rows = [n for n, row in enumerate(rows) if row.logits]
        for row in rows:
            side = int(count[row.seq] >= self.min_rows)
            self._where.append((side, len(parts[side])))
            parts[side].append(row)
        for side, ex in ((1, self.prompt), (0, self.decoder)):
            if not parts[side]:
                continue
            seqs = {row.seq for row in parts[side]}
            for seq in seqs:
                self._sync(seq, ex)
            ex.decode(parts[side])
            for seq in seqs:
                self.newer[seq] = ex

    def clear(self) -> None:
        self.prompt.clear()
        self.decoder.clear()
        self.newer.clear()

    def sampler(self, *args: Any, **kwargs: Any) -> Any:
        return self.decoder.sampler(*args, **kwargs)

    def free_sampler(self, sampler: Any) -> None:
        self.decoder.free_sampler(sampler)

    def _side(self, row: int) -> tuple[Any, int]:
        side, sub = self._where[row]
        return (self.prompt if side else self.decoder), sub

    def sample(self, sampler: Any, row: int) -> int:
        return self.sample_all([(sampler, row)])[0]

    def sample_all(self, picks: Sequence[tuple[Any, int]]) -> list[int]:
        by_side: dict[int, list[tuple[int, Any, int]]] = {0: [], 1: []}
        for n, (sampler, row) in enumerate(picks):
            side, sub = self._where[row]
            by_side[side].append((n, sampler, sub))
        out = [0] * len(picks)
        for side, ex in ((0, self.decoder), (1, self.prompt)):
            if by_side[side]:
                got = ex.sample_all([(sampler, sub) for _, sampler, sub in by_side[side]])
                for (n, _, _), token in zip(by_side[side], got, strict=True):
                    out[n] = token
        return out

    def logits(self, row: int) -> np.ndarray:
        ex, sub = self._side(row)
        return ex.logits(sub)

    def logits_all(self) -> np.ndarray:
        """Every output row's logits in batch order (a copy when the step was split)."""
        sides = {side for side, _ in self._where}
        if len(sides) == 1:
            return (self.prompt if sides.pop() else self.decoder).logits_all()
        return np.stack([self.logits(n) for n in self._logit_rows])

    def set_threads(self, threads: int, threads_batch: int) -> None:
        self.prompt.set_threads(threads, threads_batch)
        self.decoder.set_threads(threads, threads_batch)

    def is_eog(self, token: int) -> bool:
        return self.decoder.is_eog(token)

    def piece(self, token: int) -> bytes:
        return self.decoder.piece(token)

    def close(self) -> None:
        self.prompt.close()
        self.decoder.close()
