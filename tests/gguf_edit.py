"""Rewrite a real GGUF's metadata and keep its tensors: the fuzz material for special token ids and
metadata types. Only the key/value section changes; the tensor infos (whose offsets are relative to
the data section) and the tensor data are copied as they are, so each variant is the real model
with one lie in its header."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import gguf

# GGUF value type ids
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_PACK = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
         I64: "<q", F64: "<d"}


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(kind: int, value: Any) -> bytes:
    if kind == STR:
        return _string(value)
    if kind == ARR:
        elem, items = value
        return struct.pack("<IQ", elem, len(items)) + b"".join(_value(elem, v) for v in items)
    return struct.pack(_PACK[kind], value)


class Template:
    """The parts of one real GGUF file that every variant shares."""

    def __init__(self, path: Path) -> None:
        self.path = path
        reader = gguf.GGUFReader(path)
        raw = path.read_bytes()[:reader.data_offset]
        self.version = struct.unpack_from("<I", raw, 4)[0]
        self.kv: dict[str, bytes] = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):  # the reader's own view of the header counts
                continue
            size = sum(int(p.nbytes) for p in field.parts)
            self.kv[name] = raw[field.offset:field.offset + size]
        first = reader.tensors[0].field
        last = reader.tensors[-1].field
        self.tensor_info = raw[first.offset:last.offset + sum(int(p.nbytes) for p in last.parts)]
        self.n_tensors = len(reader.tensors)
        self.data_offset = reader.data_offset
        align = reader.fields.get("general.alignment")
        self.alignment = int(align.contents()) if align is not None else 32
        self.n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)

    def write(self, out: Path, changes: dict[str, tuple[int, Any] | None]) -> Path:
        """A copy with ``changes`` applied: key -> (type id, value), or None to drop the key."""
        kv = dict(self.kv)
        for key, change in changes.items():
            if change is None:
                kv.pop(key, None)
            else:
                kv[key] = _string(key) + struct.pack("<I", change[0]) + _value(*change)
        head = b"GGUF" + struct.pack("<IQQ", self.version, self.n_tensors, len(kv))
        head += b"".join(kv.values()) + self.tensor_info
        head += b"\0" * (-len(head) % self.alignment)
        with out.open("wb") as dst, self.path.open("rb") as src:
            dst.write(head)
            src.seek(self.data_offset)
            size = os.fstat(src.fileno()).st_size - self.data_offset
            copied = 0
            while copied < size:  # in the kernel: the tensors are 90% of the file and never change
                copied += os.copy_file_range(src.fileno(), dst.fileno(), size - copied)
        return out
