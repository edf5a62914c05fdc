"""Requantize an installed GGUF model with llama.cpp's own quantizer (as llama-cpp-python exposes it).

The result is a new model in the store, named ``<name>-<quant>``, verified and installed atomically
like any download, so a failed or interrupted quantization never leaves a half file registered.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from engine.errors import InvalidArgumentError, SourceError
from engine.models import store
from engine.models.store import FileEntry, Manifest, Staging, install_gguf, sha256_file

TARGETS = ("Q4_0", "Q4_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")


def quantize_file(src: Path, out: Path, target: str) -> None:
    """llama.cpp's quantizer, quietly (it logs a line per tensor)."""
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{target}")
    params.allow_requantize = True  # our sources are already quantized; llama.cpp refuses otherwise
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.exists():
        raise SourceError(f"llama.cpp's quantizer failed on {src.name} -> {target} (code {rc})")


def quantize(name: str, target: str) -> Manifest:
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
        quantize_file(src.primary_path, out, target)
        return install_gguf(stage, name=out_name, version=src.version,
                            source=f"quantize:{src.name}@{src.version}:{target}",
                            files=[FileEntry(filename, sha256_file(out), out.stat().st_size)])
