"""Requantize an installed GGUF model with llama.cpp's own quantizer (as llama-cpp-python exposes it).

The result is a new model in the store, named ``<name>-<quant>``, verified and installed atomically
like any download, so a failed or interrupted quantization never leaves a half file registered.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from pathlib import Path

from autoglm.engine.backends.llama_lib import llama_cpp, llama_log_to, pass_errors
from autoglm.engine.errors import InvalidArgumentError, SourceError
from autoglm.engine.models import store
from autoglm.engine.models.install import install_gguf
from autoglm.engine.models.progress import Progress, check_cancel
from autoglm.engine.models.store import FileEntry, Manifest, Staging, sha256_file

TARGETS = ("Q4_0", "Q4_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


_TENSOR_LINE = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]")


def quantize_file(src: Path, out: Path, target: str, progress: Progress | None = None) -> None:
    """llama.cpp's quantizer. It has no progress callback, but it logs ``[ i/ n] tensor ...`` for
    every tensor: while it runs, a log callback of ours turns those lines into progress."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{target}")
    params.allow_requantize = True  # our sources are already quantized; llama.cpp refuses otherwise

    def on_log(level: int, text: bytes) -> None:
        match = _TENSOR_LINE.match(text)
        if match and progress is not None:
            progress(f"quantizing to {target}", int(match[1]), int(match[2]))
        else:
            pass_errors(level, text)

    with llama_log_to(on_log):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.exists():
        raise SourceError(f"llama.cpp's quantizer failed on {src.name} -> {target} (code {rc})")


def quantize(name: str, target: str, progress: Progress | None = None,
             cancel: threading.Event | None = None) -> Manifest:
    """A new store model ``<name>-<quant>``; ``cancel`` is honoured before anything is installed
    (llama.cpp's quantizer itself cannot be interrupted)."""
    target = target.upper()
    if target not in TARGETS:
        raise InvalidArgumentError(f"cannot quantize to '{target}'; choose one of {', '.join(TARGETS)}")
    src = store.require(name)
    if src.format != "gguf":
        raise InvalidArgumentError(f"{name} is {src.format}, only GGUF models can be requantized")
    out_name = f"{src.name}-{target.lower().replace('_', '-')}"
    with Staging() as stage:
        filename = src.primary.rsplit(".", 2)[0] + f".{target}.gguf"
        out = stage.dir / filename
        quantize_file(src.primary_path, out, target, progress)
        check_cancel(cancel, "quantizing")
        return install_gguf(stage, name=out_name, version=src.version,
                            source=f"quantize:{src.name}@{src.version}:{target}",
                            files=[FileEntry(filename, sha256_file(out), out.stat().st_size)])
