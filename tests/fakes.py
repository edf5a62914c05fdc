"""Fakes for the fast tier only: an executor with llama.cpp's contract (and its abort on an
oversized batch turned into an assertion) and a tokenizer-only backend. End-to-end tests never
use these; they run the real model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from autoglm.engine.sampling import SamplingParams

EOG = 0


def _graphs(rows: list[Any]) -> int:
    """How many graphs llama.cpp runs a batch as, with a KV stream per sequence: one per run of
    consecutive sequence ids, and more while some sequence has tokens left over (drafts, prompts)."""
    counts: dict[int, int] = {}
    for row in rows:
        counts[row.seq] = counts.get(row.seq, 0) + 1
    seqs = sorted(counts)
    runs = 1 + sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b != a + 1)
    return runs + (len(set(counts.values())) > 1)


class FakeExecutor:
    """Keeps each sequence's KV cells as a token list and checks every row against them: positions
    must continue the sequence exactly, and a batch over ``n_batch`` fails the test (llama.cpp
    would abort the process). The "model" predicts a deterministic next token from the sequence."""

    def __init__(self, n_seq: int = 4, n_batch: int = 64, vocab: int = 50, fail_on_step: int | None = None,
                 eog_after: int | None = None, copy_period: int | None = None, step_s: float = 0.0,
                 row_s: float = 0.0, ctx: int | None = None) -> None:
        self.n_seq, self.n_batch, self.vocab = n_seq, n_batch, vocab
        self.ctx = ctx  # cells per sequence, where a test sets it (llama.cpp fails the decode past them)
        self.kv: list[list[int]] = [[] for _ in range(n_seq)]
        self.fail_on_step, self.eog_after, self.copy_period = fail_on_step, eog_after, copy_period
        self.steps = 0
        self.max_rows = 0
        self.outputs: dict[int, int] = {}
        self.samplers = 0  # live samplers: a leak check
        self.closed = False
        self.slow: set[int] = set()
        self.step_s, self.row_s = step_s, row_s  # simulated time per step and per row (for the step cost model)

    def trim(self, seq: int, keep: int) -> None:
        assert 0 <= keep <= len(self.kv[seq]), (seq, keep, len(self.kv[seq]))
        del self.kv[seq][keep:]

    def next_token(self, seq_tokens: list[int]) -> int:
        if self.eog_after is not None and len(seq_tokens) >= self.eog_after:
            return EOG
        if self.copy_period and len(seq_tokens) >= self.copy_period:  # a model that repeats its context
            return seq_tokens[-self.copy_period]
        return 1 + (sum(seq_tokens) * 31 + len(seq_tokens)) % (self.vocab - 1)

    def decode(self, rows: list[Any]) -> None:
        self.steps += 1
        if self.fail_on_step is not None and self.steps >= self.fail_on_step:
            raise RuntimeError(f"injected failure on step {self.steps}")
        assert 0 < len(rows) <= self.n_batch, f"batch of {len(rows)} rows exceeds n_batch {self.n_batch}"
        self.max_rows = max(self.max_rows, len(rows))
        if self.step_s or self.row_s:
            graphs = _graphs(rows)
            time.sleep(self.step_s * graphs + self.row_s * len(rows))
        self.outputs = {}
        for i, row in enumerate(rows):
            assert row.pos == len(self.kv[row.seq]), f"seq {row.seq}: pos {row.pos} after {len(self.kv[row.seq])}"
            assert self.ctx is None or row.pos < self.ctx, f"seq {row.seq}: pos {row.pos} past {self.ctx} cells"
            self.kv[row.seq].append(row.token)
            if row.logits:
                self.outputs[i] = self.next_token(self.kv[row.seq])

    def clear(self) -> None:
        self.kv = [[] for _ in range(self.n_seq)]

    def save_seq(self, seq: int) -> list[int]:
        return list(self.kv[seq])

    def load_seq(self, seq: int, data: list[int]) -> None:
        self.kv[seq] = list(data)

    def sampler(self, params: SamplingParams, grammar: str | None = None) -> object:
        if grammar == "bad":
            from autoglm.engine.errors import InvalidArgumentError

            raise InvalidArgumentError("the response format could not be compiled into a grammar")
        self.samplers += 1
        made = object()
        if grammar == "slow":  # a grammar as costly as a schema of thousands of alternatives
            self.slow.add(id(made))
        return made

    def sample(self, sampler: object, row: int) -> int:
        return self.outputs[row]

    def sample_all(self, picks: list[tuple[object, int]]) -> list[int]:
        if any(id(sampler) in self.slow for sampler, _ in picks):
            time.sleep(0.12)
        return [self.outputs[row] for _, row in picks]

    def logits(self, row: int) -> np.ndarray:
        """So peaked on the predicted token that a sampled stream draws it too (text stays comparable)."""
        out = np.zeros(self.vocab, dtype=np.float32)
        out[self.outputs[row]] = 100.0
        return out

    def free_sampler(self, sampler: object) -> None:
        self.samplers -= 1

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def piece(self, token: int) -> bytes:
        return bytes([ord("a") + token % 26])

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    """Tokenizer and metadata of a ChatML model: one token per byte, enough for the server's
    prompt building and request handling."""

    metadata = {"tokenizer.chat_template": ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                                            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                                            "<|im_start|>assistant\n{% endif %}")}

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return [1 + b % 49 for b in text.encode()]

    def control_texts(self) -> list[str]:
        return []

    def token_text(self, token_id: int) -> str:
        return chr(ord("a") + token_id % 26)


ASSISTANT = "<|im_start|>assistant\n"


class ScriptedExecutor(FakeExecutor):
    """A "model" that writes fixed text, one character per token (with ``CharBackend``):
    ``free`` after the prompt, ``calls`` once the reply holds an opened ``<tool_call>`` (the
    second phase of tool calling). Enough to drive the server's tool flow; grammars are not
    applied (the real model's tests prove those)."""

    def __init__(self, free: str, calls: str = "", **kwargs: Any) -> None:
        super().__init__(vocab=256, **kwargs)
        self.free, self.calls = free, calls

    def next_token(self, seq_tokens: list[int]) -> int:
        text = "".join(map(chr, seq_tokens))
        reply = text[text.rfind(ASSISTANT) + len(ASSISTANT):]
        opened = reply.find("<tool_call>\n")
        script, done = (self.calls, reply[opened + 12:]) if opened >= 0 else (self.free, reply)
        return ord(script[len(done)]) if len(done) < len(script) else EOG

    def piece(self, token: int) -> bytes:
        return chr(token).encode()


class CharBackend(FakeBackend):
    """One token per character (Latin-1; others become '?'), so scripted text round-trips."""

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return [ord(c) if 0 < ord(c) < 256 else ord("?") for c in text]
