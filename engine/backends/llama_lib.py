"""llama.cpp as llama-cpp-python loads it, with its CPU backends loaded first.

A portable build (``GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON``, what the bundles ship) keeps
each CPU variant (x64, sse42, haswell, skylakex, zen4, ...) in its own ``libggml-cpu-*.so`` and
registers none until asked; llama-cpp-python 0.3.36 never asks (upstream issue #2069), so a model
load fails with "no backends are loaded". ggml then picks the best variant this CPU supports,
which is what keeps a bundle from dying with an illegal instruction on an older CPU.
Import ``llama_cpp`` (and ``onnxruntime``, when both may be loaded) from here, never directly:
this module fixes the order of the two native runtimes.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from autoglm.engine.errors import BackendError

try:  # first, always: onnxruntime imported after a CUDA build of llama.cpp segfaults (seen on an H100)
    import onnxruntime
except ImportError:  # an install without the encoders
    onnxruntime = None

import llama_cpp  # noqa: E402 - after onnxruntime, on purpose
from llama_cpp import _ggml, _logger  # noqa: E402

__all__ = ["llama_cpp", "onnxruntime", "backend_dirs", "cpu_variants", "chosen_variant", "llama_log_to"]

_LOG_LOCK = threading.Lock()  # llama.cpp's log callback is process-wide: one redirection at a time
_chosen: list[str] = []


@contextmanager
def llama_log_to(handler: Callable[[int, bytes], None]) -> Iterator[None]:
    """Send llama.cpp's (and ggml's) log lines to ``handler(level, text)`` while the block runs,
    then give them back to llama-cpp-python. For reading what llama.cpp only logs (quantizer
    progress, the CPU variant it loaded); error lines should still be passed on."""

    @llama_cpp.llama_log_callback
    def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        handler(level, text or b"")

    with _LOG_LOCK:
        llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
        try:
            yield
        finally:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def pass_errors(level: int, text: bytes) -> None:
    """What llama-cpp-python's own callback does with an error line (3: GGML_LOG_LEVEL_ERROR)."""
    if level == 3:
        _logger.llama_log_callback(level, text, None)


def backend_dirs() -> list[Path]:
    """Where a portable build's backend libraries can be: beside libggml (bundles put them there)
    or in the ``bin/`` folder the portable wheel installs next to the package."""
    package = Path(llama_cpp.__file__).parent
    return [d for d in (package / "lib", package.parent / "bin") if d.is_dir()]


def cpu_variants() -> list[str]:
    """The CPU variants a portable build carries (empty for a build tuned to one CPU)."""
    return sorted(p.name.removeprefix("libggml-cpu-").split(".")[0] for d in backend_dirs()
                  for p in d.glob("libggml-cpu-*.so*"))


def chosen_variant() -> str | None:
    """The CPU variant ggml picked for this processor in a portable build (None otherwise)."""
    return _chosen[0] if _chosen else None


def _ggml_of_libllama() -> ctypes.CDLL:
    """The libggml instance libllama uses. Wheels cannot hold symlinks, so ``libggml.so`` (what
    llama_cpp._ggml opens by path) and ``libggml.so.0`` (libllama's dependency) are two copies, and
    the dynamic linker maps both: loading backends into the first leaves libllama with none.
    Opening the dependency by its soname, without loading anything new, gets libllama's own."""
    for soname in ("libggml.so.0", "libggml.so"):
        try:
            return ctypes.CDLL(soname, mode=os.RTLD_NOLOAD)
        except OSError:
            continue
    return _ggml.libggml


def _load_backends() -> None:
    lib = _ggml_of_libllama()
    lib.ggml_backend_reg_count.restype = lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    if lib.ggml_backend_reg_count() and lib.ggml_backend_dev_count():
        return  # a build with its CPU backend linked in
    lib.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]

    def note(level: int, text: bytes) -> None:  # "load_backend: loaded CPU backend from .../libggml-cpu-zen4.so"
        found = re.search(rb"loaded CPU backend from .*libggml-cpu-([\w-]+)\.so", text)
        if found:
            _chosen.append(found[1].decode())
        pass_errors(level, text)

    for folder in backend_dirs():
        with llama_log_to(note):
            lib.ggml_backend_load_all_from_path(str(folder).encode())
        if lib.ggml_backend_dev_count():
            return
    raise BackendError("llama.cpp has no CPU backend for this processor: none of its libggml-cpu-*.so "
                       f"variants loaded from {', '.join(map(str, backend_dirs())) or 'the llama_cpp package'}")


_load_backends()
