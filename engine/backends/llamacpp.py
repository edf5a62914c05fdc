"""GGUF models through llama.cpp (llama-cpp-python): load per a Plan, tokenize, metadata.

Generation is not here: it has one path, the scheduler (``engine.scheduler``) over the executor
(``llama_executor``), which the CLI, the server, the GUI's engine, the tests and the benchmarks
all use. llama-cpp-python's own context is kept tiny since it only serves tokenizing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from autoglm.engine.backends.llama_lib import llama_cpp
from autoglm.engine.errors import BackendError

Llama = llama_cpp.Llama  # through llama_lib, which imports onnxruntime first (a CUDA build crashes otherwise)
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


def load_llama(path: str, *, n_ctx: int, n_threads: int, use_extra_bufts: bool, n_threads_batch: int | None = None,
               n_gpu_layers: int = 0, n_batch: int = 512, n_ubatch: int = 512, flash_attn: bool = False,
               use_mmap: bool = True, verbose: bool = False) -> Llama:
    """Load a GGUF file; raises BackendError (not a bare ValueError) when llama.cpp refuses it."""
    try:
        with _model_param_overrides(use_extra_bufts=use_extra_bufts):
            return Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                n_threads_batch=n_threads_batch or n_threads, n_gpu_layers=n_gpu_layers,
                n_batch=n_batch, n_ubatch=n_ubatch, flash_attn=flash_attn, use_mmap=use_mmap,
                verbose=verbose,
            )
    except ValueError as exc:
        raise BackendError(f"llama.cpp could not load {path}: {exc}") from None


class LlamaBackend:
    """One loaded GGUF model: weights, vocabulary, metadata."""

    def __init__(self, path: str, *, threads: int, gpu_layers: int, use_extra_bufts: bool, use_mmap: bool) -> None:
        # The weights are what matters here; llama-cpp-python's context only tokenizes, so it is tiny.
        self.llm = load_llama(path, n_ctx=64, n_threads=threads, use_extra_bufts=use_extra_bufts,
                              n_gpu_layers=gpu_layers, n_batch=64, n_ubatch=64, use_mmap=use_mmap)
        self.metadata: dict[str, str] = dict(self.llm.metadata)

    @property
    def has_chat_template(self) -> bool:
        """Base models ship none; they are prompted with plain text, not a guessed template."""
        return bool(self.metadata.get("tokenizer.chat_template"))

    @property
    def model(self) -> Any:
        """The native ``llama_model`` handle the executor makes its context from."""
        return self.llm.model

    def token_text(self, token_id: int) -> str:
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")

    @property
    def n_vocab(self) -> int:
        return self.llm.n_vocab()

    @property
    def eos(self) -> int:
        return self.llm.token_eos()

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """``special=False``: control-token text (``<|im_end|>``) stays text, as a user's words must."""
        return self.llm.tokenize(text.encode("utf-8", "replace"), add_bos=add_bos, special=special)

    def control_texts(self) -> list[str]:
        """The texts that tokenize to control tokens when special tokens are parsed (read once)."""
        if not hasattr(self, "_control"):
            model, flags = self.llm._model, llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
            texts = (model.token_get_text(i) for i in range(model.n_vocab()) if model.token_get_attr(i) & flags)
            self._control = sorted({t for t in texts if len(t) > 1}, key=len, reverse=True)
        return self._control
