"""A bounded walk over a GGUF header before any full parser sees it.

The ``gguf`` package's reader (and any parser that trusts the header) walks whatever counts the
header declares: a 133-byte file that declares an array of 2^31 strings kept it busy for hours.
Here every declared count and length is checked against the bytes the file can still hold before
it is walked, so the work is bounded by the file's size, and a header the file cannot hold is
refused at once. Written by hand because the gguf package has no such mode; it reads nothing but
the header (keys, value types, tensor infos), with ``struct`` over an ``mmap``.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from autoglm.engine.errors import InvalidModelError

# value type id -> fixed size in bytes (8: string and 9: array are variable)
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
MAX_KEY = 1 << 16  # llama.cpp's keys are short dotted names
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_GGML_TYPE = 64  # ids above any ggml type there is
MIN_KV = 8 + 1 + 4 + 1  # key length, one key byte, value type, the smallest value
MIN_TENSOR = 8 + 1 + 4 + 8 + 4 + 8  # name length, a name byte, n_dims, one dim, type, offset


class _Bad(Exception):
    pass


class _Walker:
    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def left(self) -> int:
        return self.size - self.pos

    def take(self, fmt: str) -> int:
        n = struct.calcsize(fmt)
        if n > self.left():
            raise _Bad(f"the header ends early (offset {self.pos})")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def skip(self, n: int, what: str) -> None:
        if n > self.left():
            raise _Bad(f"{what} declares {n} bytes at offset {self.pos}; the file holds {self.left()} more")
        self.pos += n

    def string(self, what: str, limit: int | None = None) -> int:
        length = self.take("<Q")
        if limit is not None and length > limit:
            raise _Bad(f"{what} is {length} bytes long (at most {limit})")
        self.skip(length, what)
        return length

    def count(self, n: int, min_each: int, what: str) -> int:
        if n * min_each > self.left():
            raise _Bad(f"{what}: {n} declared at offset {self.pos}, the file can hold at most "
                       f"{self.left() // min_each}")
        return n

    def value(self, kind: int, key: str, depth: int = 0) -> None:
        if kind in _FIXED:
            self.skip(_FIXED[kind], key)
        elif kind == _STRING:
            self.string(key)
        elif kind == _ARRAY:
            if depth:
                raise _Bad(f"{key}: an array of arrays")
            item = self.take("<I")
            n = self.take("<Q")
            if item in _FIXED:
                self.skip(self.count(n, _FIXED[item], key) * _FIXED[item], key)
            elif item in (_STRING, _ARRAY):
                for _ in range(self.count(n, 8, key)):
                    self.value(item, key, depth + 1)
            else:
                raise _Bad(f"{key}: unknown array item type {item}")
        else:
            raise _Bad(f"{key}: unknown value type {kind}")


def check_header(path: str | Path) -> None:
    """Refuse a GGUF whose header declares more than the file can hold; cost bounded by its size."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            if path.stat().st_size < 24:
                raise _Bad(f"{path.stat().st_size} bytes is too short for a header")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                _walk(_Walker(buf))
    except _Bad as exc:
        raise InvalidModelError(f"{path} is a damaged GGUF file: {exc}") from None
    except OSError as exc:
        raise InvalidModelError(f"cannot read {path}: {exc.strerror or exc}") from None


def _walk(w: _Walker) -> None:
    if w.buf[:4] != b"GGUF":
        raise _Bad(f"wrong magic bytes {bytes(w.buf[:4])!r}")
    w.pos = 4
    version = w.take("<I")
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version} (this build reads versions 2 and 3)")
    n_tensors, n_kv = w.take("<Q"), w.take("<Q")
    w.count(n_kv, MIN_KV, "metadata entries")
    w.count(n_tensors, MIN_TENSOR, "tensors")
    for _ in range(n_kv):
        start = w.pos
        w.string("a metadata key", MAX_KEY)
        key = bytes(w.buf[start + 8:w.pos]).decode("utf-8", "replace")[:80]
        w.value(w.take("<I"), key)
    for i in range(n_tensors):
        w.string(f"tensor {i}'s name", MAX_KEY)
        n_dims = w.take("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Bad(f"tensor {i} has {n_dims} dimensions (1-{MAX_DIMS})")
        elements = 1
        for _ in range(n_dims):
            elements *= w.take("<Q")
        if elements >= 1 << 62:
            raise _Bad(f"tensor {i} declares {elements} elements")
        if w.take("<I") >= MAX_GGML_TYPE:
            raise _Bad(f"tensor {i} has an unknown type")
        w.take("<Q")
