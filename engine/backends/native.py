"""The device as the planner sees it: the machine (``engine.hardware``) plus what the installed
native runtimes can do (llama.cpp's GPU offload and CPU variants, onnxruntime's providers).

Both runtimes are imported through ``llama_lib``, the one place that decides their order:
onnxruntime first, since importing it after a CUDA build of llama.cpp killed the process with
SIGSEGV on an H100 (the reverse order works; tests/test_layers.py keeps the order).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from autoglm.engine import hardware
from autoglm.engine.backends.llama_lib import chosen_variant, cpu_variants, llama_cpp, onnxruntime


def runtime_facts() -> dict[str, Any]:
    return {
        "llama_cpp_version": llama_cpp.__version__,
        "llama_gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "llama_cpu_variants": cpu_variants(),
        "llama_cpu_variant": chosen_variant(),
        "onnx_providers": list(onnxruntime.get_available_providers()) if onnxruntime else [],
    }


@functools.lru_cache(maxsize=1)
def probe_device() -> hardware.DeviceFacts:
    """This machine and its runtimes, probed once per process."""
    return dataclasses.replace(hardware.probe(), **runtime_facts())
