"""llama.cpp as llama-cpp-python loads it, with its CPU backends loaded first.

A portable build (``GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON``, what the bundles ship) keeps
each CPU variant (x64, sse42, haswell, skylakex, zen4, ...) in its own ``libggml-cpu-*.so`` and
registers none until asked; llama-cpp-python 0.3.36 never asks (upstream issue #2069), so a model
load fails with "no backends are loaded". ggml then picks the best variant this CPU supports,
which is what keeps a bundle from dying with an illegal instruction on an older CPU.
Import ``llama_cpp`` from here, never directly.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
from llama_cpp import _ggml

from engine.errors import BackendError

__all__ = ["llama_cpp", "backend_dirs", "cpu_variants"]


def backend_dirs() -> list[Path]:
    """Where a portable build's backend libraries can be: beside libggml (bundles put them there)
    or in the ``bin/`` folder the portable wheel installs next to the package."""
    package = Path(llama_cpp.__file__).parent
    return [d for d in (package / "lib", package.parent / "bin") if d.is_dir()]


def cpu_variants() -> list[str]:
    """The CPU variants a portable build carries (empty for a build tuned to one CPU)."""
    return sorted(p.name.removeprefix("libggml-cpu-").split(".")[0] for d in backend_dirs()
                  for p in d.glob("libggml-cpu-*.so*"))


def _load_backends() -> None:
    lib = _ggml.libggml
    lib.ggml_backend_reg_count.restype = lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    if lib.ggml_backend_reg_count() and lib.ggml_backend_dev_count():
        return  # a build with its CPU backend linked in
    lib.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    for folder in backend_dirs():
        lib.ggml_backend_load_all_from_path(str(folder).encode())
        if lib.ggml_backend_dev_count():
            return
    raise BackendError("llama.cpp has no CPU backend for this processor: none of its libggml-cpu-*.so "
                       f"variants loaded from {', '.join(map(str, backend_dirs())) or 'the llama_cpp package'}")


_load_backends()
