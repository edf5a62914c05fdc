"""Generators of hostile input for the abuse suite: GGUF files with bad headers and wheels built
to hurt whoever unpacks them. Plain functions over real bytes; nothing here fakes the engine."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np


def minimal_gguf(path: Path) -> Path:
    """A small valid GGUF (metadata with a string array, two tensors) written by the gguf package."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(1)
    writer.add_token_list([f"tok{i}" for i in range(40)])
    writer.add_array("tiny.scores", [float(i) for i in range(40)])
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(4, 16))
    writer.add_tensor("output.weight", np.ones((2, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _string(text: bytes, declared: int | None = None) -> bytes:
    return struct.pack("<Q", len(text) if declared is None else declared) + text


def crafted_headers() -> dict[str, bytes]:
    """Headers that declare more than the file holds, each a known way to make a parser loop,
    allocate or read past the end."""
    head = b"GGUF" + struct.pack("<I", 3)
    kv = _string(b"general.architecture") + struct.pack("<I", 8) + _string(b"llama")
    return {
        # the 133-byte file of the report: an array of 2^31 strings
        "array-of-2^31-strings": head + struct.pack("<QQ", 0, 1) + _string(b"tokenizer.ggml.tokens")
        + struct.pack("<IIQ", 9, 8, 1 << 31) + _string(b"a") * 4,
        "2^63-metadata-entries": head + struct.pack("<QQ", 0, 1 << 63) + kv,
        "2^40-tensors": head + struct.pack("<QQ", 1 << 40, 1) + kv,
        "string-of-2^62-bytes": head + struct.pack("<QQ", 0, 1) + _string(b"k") + struct.pack("<I", 8)
        + _string(b"x", 1 << 62),
        "key-of-2^40-bytes": head + struct.pack("<QQ", 0, 1) + _string(b"k", 1 << 40),
        "array-of-2^60-floats": head + struct.pack("<QQ", 0, 1) + _string(b"k") + struct.pack("<IIQ", 9, 6, 1 << 60),
        "array-of-arrays": head + struct.pack("<QQ", 0, 1) + _string(b"k") + struct.pack("<IIQ", 9, 9, 2)
        + struct.pack("<IQ", 9, 1 << 30) * 2,
        "unknown-value-type": head + struct.pack("<QQ", 0, 1) + _string(b"k") + struct.pack("<I", 77) + b"\0" * 16,
        "tensor-with-2^32-dims": head + struct.pack("<QQ", 1, 1) + kv + _string(b"t") + struct.pack("<I", 1 << 31),
        "tensor-of-2^64-elements": head + struct.pack("<QQ", 1, 1) + kv + _string(b"t")
        + struct.pack("<I4Q", 4, 1 << 16, 1 << 16, 1 << 16, 1 << 16) + struct.pack("<IQ", 0, 0),
        "tensor-data-past-the-end": head + struct.pack("<QQ", 1, 1) + kv + _string(b"t")
        + struct.pack("<IQ", 1, 1 << 20) + struct.pack("<IQ", 0, 1 << 30),
        "version-1": b"GGUF" + struct.pack("<I", 1) + b"\0" * 32,
        "version-2^31": b"GGUF" + struct.pack("<I", 1 << 31) + b"\0" * 32,
        "only-the-magic": b"GGUF",
    }


def fuzzed_ggufs(valid: bytes, count: int, seed: int = 0) -> dict[str, bytes]:
    """Random, truncated and bit-flipped variants of ``valid`` (a real GGUF's bytes)."""
    rng = random.Random(seed)
    header_end = min(len(valid), 4096)
    out: dict[str, bytes] = {}
    for i in range(count):
        kind = i % 4
        if kind == 0:
            out[f"random-{i}"] = b"GGUF" + struct.pack("<I", 3) + rng.randbytes(rng.randrange(16, 2048))
        elif kind == 1:
            out[f"truncated-{i}"] = valid[:rng.randrange(8, len(valid))]
        elif kind == 2:
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(8, header_end)] ^= 1 << rng.randrange(8)
            out[f"flipped-{i}"] = bytes(data)
        else:  # a random 8-byte field of the header replaced by a huge count
            data = bytearray(valid)
            at = rng.randrange(8, header_end - 8)
            data[at:at + 8] = struct.pack("<Q", rng.choice([1 << 31, 1 << 40, 1 << 62, (1 << 64) - 1]))
            out[f"huge-{i}"] = bytes(data)
    return out


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(folder: Path, dist: str, version: str, files: dict[str, bytes], *,
               symlinks: dict[str, str] | None = None, record_sizes: dict[str, int] | None = None) -> Path:
    """A wheel pip will download, whose members are whatever the test wants; RECORD states every
    member's true sha256 (sizes overridable) so only the engine's own checks can refuse it."""
    module = dist.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    meta = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
            f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hostile\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    members = {**files, **meta}
    lines = [_record_line(n, d) for n, d in members.items()]
    for name, size in (record_sizes or {}).items():
        lines = [ln.rsplit(",", 1)[0] + f",{size}" if ln.startswith(name + ",") else ln for ln in lines]
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            link = zipfile.ZipInfo(name)
            link.external_attr = (0o120777 << 16)  # S_IFLNK
            zf.writestr(link, target)
        zf.writestr(f"{info}/RECORD", "\n".join([*lines, f"{info}/RECORD,,"]) + "\n")
    return path


def make_sdist(folder: Path, dist: str, version: str, marker: Path) -> Path:
    """An sdist whose setup.py leaves ``marker`` behind if anything ever runs it."""
    setup = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
             f"from setuptools import setup\nsetup(name={dist!r}, version={version!r})\n").encode()
    base = f"{dist}-{version}"
    path = folder / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in ((f"{base}/setup.py", setup),
                           (f"{base}/PKG-INFO", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode())):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path
