"""The scheduler's executor over one llama.cpp context: batches, KV trims, samplers, token text.

Thin on purpose: every decision (admission, prefix reuse, chunk sizes, batch composition) is the
step planner's, which is tested without llama.cpp; this module only turns its rows into one
``llama_decode`` and keeps the native handles. Used from the scheduler thread alone.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from autoglm.engine.backends.llama_lib import llama_cpp
from autoglm.engine.errors import BackendError, InvalidArgumentError
from autoglm.engine.sampling import SamplingParams


class RowLike(Protocol):
    token: int
    pos: int
    seq: int
    logits: bool


GREEDY = object()  # temperature 0, no grammar: an argmax over the logits, no sampler chain


class LlamaExecutor:
    def __init__(self, model: Any, *, n_seq: int, ctx_per_seq: int, n_batch: int, threads: int,
                 threads_batch: int | None = None, flash_attn: bool = True, offload_kqv: bool = True,
                 kv_type: str = "f16", n_ubatch: int | None = None) -> None:
        self.model, self.n_seq, self.n_batch = model, n_seq, n_batch
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_seq * ctx_per_seq
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_ubatch or n_batch, n_batch)
        cparams.n_seq_max = n_seq
        cparams.kv_unified = False  # one KV stream per sequence: batching never mixes their attention
        cparams.n_threads, cparams.n_threads_batch = threads, threads_batch or threads
        cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                   else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if kv_type == "q8_0":  # planned only with flash attention, which a quantized V cache needs
            cparams.type_k = cparams.type_v = llama_cpp.GGML_TYPE_Q8_0
        cparams.offload_kqv = offload_kqv  # False with no layer on a GPU: no GPU buffers for nothing
        if hasattr(cparams, "op_offload"):
            cparams.op_offload = offload_kqv
        self.ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not make a context for {n_seq} sequences x {ctx_per_seq} tokens "
                               "(out of memory? try a smaller --ctx or --parallel)")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        self._outputs: dict[int, int] = {}  # batch row -> index of its logits among this step's outputs
        self._pieces: dict[int, bytes] = {}  # token text and end-of-generation, asked once per token
        self._eog: dict[int, bool] = {}
        self._table: np.ndarray | None = None  # the last logits view and its (address, rows)
        self._table_key: tuple[int | None, int] = (None, 0)

    # --- the step ---------------------------------------------------------------------------
    def trim(self, seq: int, keep: int) -> None:
        """Drop sequence ``seq``'s KV cells from position ``keep`` on."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq, keep, -1)

    def decode(self, rows: Sequence[RowLike]) -> None:
        if len(rows) > self.n_batch:  # the planner's invariant; llama.cpp would abort the process
            raise BackendError(f"a step of {len(rows)} tokens exceeds the batch of {self.n_batch}")
        b = self.batch
        token, pos, n_seq_id, seq_id, logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        outputs: dict[int, int] = {}
        for n, row in enumerate(rows):
            token[n] = row.token
            pos[n] = row.pos
            n_seq_id[n] = 1
            seq_id[n][0] = row.seq
            logits[n] = row.logits
            if row.logits:
                outputs[n] = len(outputs)
        b.n_tokens = len(rows)
        self._outputs = outputs
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise BackendError(f"llama_decode failed ({rc})")

    def save_seq(self, seq: int) -> Any:
        """Sequence ``seq``'s cells, to ``load_seq`` into another context over the same model file."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx, seq)
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self.ctx, data, size, seq) != size:
            raise BackendError(f"llama.cpp could not save sequence {seq}'s cells")
        return data

    def load_seq(self, seq: int, data: Any) -> None:
        """Replace sequence ``seq``'s cells by saved ones."""
        self.trim(seq, 0)
        if llama_cpp.llama_state_seq_set_data(self.ctx, data, len(data), seq) != len(data):
            raise BackendError(f"llama.cpp could not load sequence {seq}'s cells (out of KV cells?)")

    def clear(self) -> None:
        """Forget every sequence's cells (after a failed step their state is unknown)."""
        llama_cpp.llama_memory_clear(self.memory, True)

    # --- sampling and text ----------------------------------------------------------------
    def sampler(self, params: SamplingParams, grammar: str | None = None) -> Any:
        if params.temperature <= 0 and not grammar:
            return GREEDY
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if grammar:
            g = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            if not g:
                llama_cpp.llama_sampler_free(chain)
                raise InvalidArgumentError("the response format could not be compiled into a grammar")
            llama_cpp.llama_sampler_chain_add(chain, g)
        add = llama_cpp.llama_sampler_chain_add
        if params.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
            add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def sample(self, sampler: Any, row: int) -> int:
        return self.sample_all([(sampler, row)])[0]

    def sample_all(self, picks: Sequence[tuple[Any, int]]) -> list[int]:
        """The next token for each (sampler, batch row) of the last step. Greedy rows take one
        argmax over every output's logits at once (the first highest, as llama.cpp's greedy
        sampler picks); others run their sampler chain."""
        best = self._logits_table().argmax(axis=1) if any(sampler is GREEDY for sampler, _ in picks) else []
        return [int(best[self._outputs[row]]) if sampler is GREEDY else
                llama_cpp.llama_sampler_sample(sampler, self.ctx, row) for sampler, row in picks]

    def logits(self, row: int) -> np.ndarray:
        """Batch row ``row``'s logits from the last step (a view: valid until the next decode)."""
        return self._logits_table()[self._outputs[row]]

    def logits_all(self) -> np.ndarray:
        """Every output row's logits from the last step, in batch order (a view)."""
        return self._logits_table()

    def _logits_table(self) -> np.ndarray:
        """A view of llama.cpp's output buffer, made again only when the buffer moved or the number
        of output rows changed (a decode stream asks every step: a few ctypes calls fewer each time)."""
        n_out = len(self._outputs)
        address = ctypes.cast(llama_cpp.llama_get_logits(self.ctx), ctypes.c_void_p).value
        if self._table is None or self._table_key != (address, n_out):
            table = np.frombuffer((ctypes.c_float * (n_out * self.n_vocab)).from_address(address), dtype=np.float32)
            self._table, self._table_key = table.reshape(n_out, self.n_vocab), (address, n_out)
        return self._table

    def set_threads(self, threads: int, threads_batch: int) -> None:
        """Switch thread counts between steps (a cheap call): fewer when other processes take the cores."""
        llama_cpp.llama_set_n_threads(self.ctx, threads, threads_batch)

    def free_sampler(self, sampler: Any) -> None:
        if sampler is not GREEDY:
            llama_cpp.llama_sampler_free(sampler)

    def is_eog(self, token: int) -> bool:
        known = self._eog.get(token)
        if known is None:
            known = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return known

    def piece(self, token: int) -> bytes:
        known = self._pieces.get(token)
        if known is None:
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
            known = self._pieces[token] = self._piece.raw[: max(n, 0)]
        return known

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
