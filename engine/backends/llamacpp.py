"""GGUF models through llama.cpp (llama-cpp-python): load per a Plan, stream tokens.

The backend owns the native handles and exposes plain Python. It keeps the tokens already in
the KV cache, so the next request that shares a prefix (the next turn of a chat) evaluates only
its new tokens; llama-cpp-python's ``Llama.generate`` does the prefix match and KV trimming.
"""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from llama_cpp import Llama

from engine.backends.llama_lib import llama_cpp
from engine.errors import BackendError, ContextOverflowError, InvalidArgumentError
from engine.planner import Plan

_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _model_param_overrides(**fields: Any) -> Iterator[None]:
    """Set llama_model_params fields that ``Llama.__init__`` does not expose.

    llama-cpp-python 0.3.x builds its model params from ``llama_model_default_params`` and
    offers no argument for ``use_extra_bufts``; wrapping that one function while the model
    loads is the narrowest way to reach the field without re-implementing the loader.
    """
    module = llama_cpp.llama_cpp
    original = module.llama_model_default_params

    def patched() -> Any:
        params = original()
        for key, value in fields.items():
            setattr(params, key, value)
        return params

    with _PARAMS_LOCK:
        module.llama_model_default_params = patched
        try:
            yield
        finally:
            module.llama_model_default_params = original


class _CountingLlama(Llama):
    """Counts the tokens really sent to ``llama_decode``, so prefix reuse is measurable."""

    evaluated = 0

    def eval(self, tokens: Any) -> None:
        self.evaluated += len(tokens)
        super().eval(tokens)


def load_llama(path: str, *, n_ctx: int, n_threads: int, use_extra_bufts: bool, n_threads_batch: int | None = None,
               n_gpu_layers: int = 0, n_batch: int = 512, n_ubatch: int = 512, flash_attn: bool = False,
               use_mmap: bool = True, verbose: bool = False) -> _CountingLlama:
    """Load a GGUF file; raises BackendError (not a bare ValueError) when llama.cpp refuses it."""
    try:
        with _model_param_overrides(use_extra_bufts=use_extra_bufts):
            return _CountingLlama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                n_threads_batch=n_threads_batch or n_threads, n_gpu_layers=n_gpu_layers,
                n_batch=n_batch, n_ubatch=n_ubatch, flash_attn=flash_attn, use_mmap=use_mmap,
                verbose=verbose,
            )
    except ValueError as exc:
        raise BackendError(f"llama.cpp could not load {path}: {exc}") from None


@dataclass
class SamplingParams:
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    seed: int | None = None
    stop: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise InvalidArgumentError(f"max tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            raise InvalidArgumentError(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidArgumentError(f"top-p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prompt_evaluated: int = 0  # tokens of the prompt actually decoded (the rest came from the KV cache)
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str = ""  # "stop", "length" or "cancelled"

    @property
    def decode_tps(self) -> float:
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s > 0 and self.completion_tokens > 1 else 0.0


def _stop_split(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text safe to emit now, and whether a stop string was hit (text then ends before it)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], True
    hold = 0  # keep back a tail that could still grow into a stop string
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold], False


class LlamaBackend:
    """One loaded GGUF model and its context; not thread-safe (one generation at a time)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.llm = load_llama(
            plan.model_path, n_ctx=plan.n_ctx, n_threads=plan.threads, n_threads_batch=plan.threads_batch,
            use_extra_bufts=plan.use_extra_bufts, n_gpu_layers=plan.gpu_layers, n_batch=plan.n_batch,
            n_ubatch=plan.n_ubatch, flash_attn=plan.flash_attn, use_mmap=plan.use_mmap,
        )
        self.metadata: dict[str, str] = dict(self.llm.metadata)
        vocab = self.llm._model.vocab
        self._is_eog = lambda tok: bool(llama_cpp.llama_vocab_is_eog(vocab, tok))

    @property
    def has_chat_template(self) -> bool:
        """Base models ship none; they are prompted with plain text, not a guessed template."""
        return bool(self.metadata.get("tokenizer.chat_template"))

    @property
    def n_ctx(self) -> int:
        # llama.cpp may pad the context it allocates; llama-cpp-python's token buffer has the size asked for.
        return min(self.llm.n_ctx(), len(self.llm.input_ids))

    def token_text(self, token_id: int) -> str:
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def reset(self) -> None:
        """Forget the KV cache (the next prompt is evaluated in full)."""
        self.llm.reset()

    def generate(self, tokens: list[int], params: SamplingParams, cancel: threading.Event | None = None,
                 stats: GenerationStats | None = None) -> Iterator[str]:
        """Stream text for ``tokens``; fills ``stats`` as it goes (read it after the loop)."""
        params.validate()
        stats = stats if stats is not None else GenerationStats()
        stats.prompt_tokens = len(tokens)
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}; "
                "use --ctx to enlarge it or shorten the prompt"
            )
        max_tokens = min(params.max_tokens, room)
        if params.seed is not None:
            self.llm.set_seed(params.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending, stop_hit = "", False
        before = self.llm.evaluated
        start = time.perf_counter()
        first_token_at = start
        stats.finish_reason = "length"
        gen = self.llm.generate(tokens, temp=params.temperature, top_p=params.top_p, top_k=params.top_k,
                                min_p=0.0, repeat_penalty=1.0)
        try:
            for tok in gen:
                if stats.completion_tokens == 0:
                    first_token_at = time.perf_counter()
                    stats.prefill_s = first_token_at - start
                    stats.prompt_evaluated = self.llm.evaluated - before
                if cancel is not None and cancel.is_set():
                    stats.finish_reason = "cancelled"
                    break
                if self._is_eog(tok):
                    stats.finish_reason = "stop"
                    break
                stats.completion_tokens += 1
                pending += decoder.decode(self.llm.detokenize([tok]))
                text, hit = _stop_split(pending, params.stop) if params.stop else (pending, False)
                if text:
                    yield text
                    pending = pending[len(text):]
                if hit:
                    stats.finish_reason, stop_hit = "stop", True
                    break
                if stats.completion_tokens >= max_tokens:
                    break
            pending += decoder.decode(b"", final=True)
            if pending and not stop_hit:
                yield pending
        finally:
            gen.close()
            stats.decode_s = time.perf_counter() - first_token_at
