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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.engine.errors import InvalidModelError

# value type id -> fixed size in bytes (8: string and 9: array are variable)
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_INT_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
_FLOAT_FORMATS = {6: "<f", 12: "<d"}
MAX_SMALL_ARRAY = 4096  # integer arrays kept (per-layer head counts); longer ones (token types) are only walked
MAX_TEXT = 1 << 20  # top-level texts kept (a chat template is a few KiB); longer ones are only walked
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

    def value(self, kind: int, key: str, depth: int = 0) -> Any:
        """Walk one value; returns an integer scalar's value, an array's (item type, count), else None."""
        if kind in _INT_FORMATS:
            return self.take(_INT_FORMATS[kind])
        if kind in _FLOAT_FORMATS:
            return self.take(_FLOAT_FORMATS[kind])
        if kind in _FIXED:
            self.skip(_FIXED[kind], key)
        elif kind == _STRING:
            length = self.string(key)
            if not depth and length <= MAX_TEXT:  # a top-level text (name, architecture, chat template)
                return bytes(self.buf[self.pos - length:self.pos]).decode("utf-8", "replace")
        elif kind == _ARRAY:
            if depth:
                raise _Bad(f"{key}: an array of arrays")
            item = self.take("<I")
            n = self.take("<Q")
            if item in _INT_FORMATS and not depth and n <= MAX_SMALL_ARRAY:  # per-layer counts: kept
                self.count(n, _FIXED[item], key)
                return item, n, tuple(self.take(_INT_FORMATS[item]) for _ in range(n))
            if item in _FIXED:
                self.skip(self.count(n, _FIXED[item], key) * _FIXED[item], key)
            elif item in (_STRING, _ARRAY):
                for _ in range(self.count(n, 8, key)):
                    self.value(item, key, depth + 1)
            else:
                raise _Bad(f"{key}: unknown array item type {item}")
            return item, n
        else:
            raise _Bad(f"{key}: unknown value type {kind}")
        return None


@dataclass
class Header:
    """What a GGUF's header says: each key's (value type, value) (an int, a float, a text up to
    MAX_TEXT, or an array's (item type, count)), and each tensor's element count, type and offset."""

    keys: dict[str, tuple[int, Any]]
    tensors: list[tuple[int, int, int]]  # (elements, ggml type, offset within the data section)
    data_offset: int

    def value(self, key: str, default: Any = None) -> Any:
        return self.keys[key][1] if key in self.keys else default

    def data_end(self) -> int:
        """Where the last tensor's bytes end: a shorter file is truncated."""
        import gguf

        end = 0
        for elements, kind, offset in self.tensors:
            block, size = gguf.GGML_QUANT_SIZES.get(gguf.GGMLQuantizationType(kind), (1, 0))
            end = max(end, self.data_offset + offset + elements // block * size)
        return end


def check_header(path: str | Path) -> Header:
    """Refuse a GGUF whose header declares more than the file can hold, or whose tokenizer llama.cpp
    would index out of bounds; cost bounded by its size (no vocabulary is materialised: 0.05 s for
    SmolLM2's 49,152 tokens, where the gguf package's reader took 3.5 s)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            if path.stat().st_size < 24:
                raise _Bad(f"{path.stat().st_size} bytes is too short for a header")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                header = _walk(_Walker(buf))
    except _Bad as exc:
        raise InvalidModelError(f"{path} is a damaged GGUF file: {exc}") from None
    except OSError as exc:
        raise InvalidModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        check_tokenizer(header.keys)
    except _Bad as exc:
        raise InvalidModelError(f"{path} has broken metadata: {exc}; refused before llama.cpp reads it") from None
    return header


# Every token id the metadata may name (llama-vocab.cpp reads these and indexes the vocabulary with
# some of them without a bounds check: an id past the end aborted the whole process, the server too).
SPECIAL_IDS = ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask", "cls", "sep",
               "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep", "prefix", "suffix", "middle")
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}


def check_tokenizer(keys: dict[str, tuple[int, Any]]) -> None:
    """What llama.cpp indexes without bounds: special token ids against the vocabulary, and the
    per-token arrays (types, scores) against its length, each of the type llama.cpp reads."""
    tokens = keys.get("tokenizer.ggml.tokens")
    if tokens is None:
        return  # no vocabulary: llama.cpp refuses such a file with an error of its own
    if tokens[0] != _ARRAY or tokens[1][0] != _STRING:
        raise _Bad("tokenizer.ggml.tokens is not a list of strings")
    n_vocab = tokens[1][1]
    if n_vocab == 0:
        raise _Bad("the vocabulary is empty")
    for name in SPECIAL_IDS:
        key = f"tokenizer.ggml.{name}_token_id"
        if key not in keys:
            continue
        kind, value = keys[key]
        if kind not in _INT_FORMATS:
            raise _Bad(f"{key} is a {_TYPE_NAMES.get(kind, kind)}, not a token id")
        if not 0 <= value < n_vocab:
            raise _Bad(f"{key} is {value}, outside the vocabulary of {n_vocab} tokens")
    for key, item in (("tokenizer.ggml.token_type", (4, 5)), ("tokenizer.ggml.scores", (6,)),
                      ("tokenizer.ggml.merges", (_STRING,))):
        if key in keys:
            kind, value = keys[key]
            if kind != _ARRAY or value[0] not in item:
                raise _Bad(f"{key} is not a list of {_TYPE_NAMES[item[0]]}")
            if key != "tokenizer.ggml.merges" and value[1] != n_vocab:
                raise _Bad(f"{key} has {value[1]} entries for {n_vocab} tokens")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template", "general.architecture"):
        if key in keys and keys[key][0] != _STRING:
            raise _Bad(f"{key} is a {_TYPE_NAMES.get(keys[key][0], keys[key][0])}, not text")
    for key, (kind, value) in keys.items():  # the model's shape: counts, one per model or per layer
        if key.endswith(_COUNTS) or key in ("general.alignment", "general.file_type"):
            if kind == _ARRAY and key.endswith(_PER_LAYER) and value[0] in _INT_FORMATS:
                continue
            if kind not in _INT_FORMATS:
                raise _Bad(f"{key} is a {_TYPE_NAMES.get(kind, kind)}, not a count")
            if not 0 <= value < 1 << 31 or (key == "general.alignment" and (value == 0 or value & (value - 1))):
                raise _Bad(f"{key} is {value}")


_COUNTS = (".block_count", ".context_length", ".embedding_length", ".feed_forward_length", ".vocab_size",
           ".attention.head_count", ".attention.head_count_kv", ".attention.key_length", ".attention.value_length",
           ".expert_count", ".expert_used_count")
_PER_LAYER = (".feed_forward_length", ".attention.head_count", ".attention.head_count_kv")


def _walk(w: _Walker) -> Header:
    if w.buf[:4] != b"GGUF":
        raise _Bad(f"wrong magic bytes {bytes(w.buf[:4])!r}")
    w.pos = 4
    version = w.take("<I")
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version} (this build reads versions 2 and 3)")
    n_tensors, n_kv = w.take("<Q"), w.take("<Q")
    w.count(n_kv, MIN_KV, "metadata entries")
    w.count(n_tensors, MIN_TENSOR, "tensors")
    keys: dict[str, tuple[int, Any]] = {}
    for _ in range(n_kv):
        start = w.pos
        w.string("a metadata key", MAX_KEY)
        key = bytes(w.buf[start + 8:w.pos]).decode("utf-8", "replace")[:80]
        kind = w.take("<I")
        keys[key] = (kind, w.value(kind, key))
    tensors = []
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
        kind = w.take("<I")
        if kind >= MAX_GGML_TYPE:
            raise _Bad(f"tensor {i} has an unknown type")
        tensors.append((elements, kind, w.take("<Q")))
    align = keys.get("general.alignment", (4, 32))[1]
    if not isinstance(align, int) or align <= 0:
        raise _Bad(f"general.alignment is {align}")
    return Header(keys, tensors, w.pos + (-w.pos % align))
