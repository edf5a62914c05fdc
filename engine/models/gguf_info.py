"""Facts about a GGUF file, read with the ``gguf`` package, and checks that it is one.

We validate before handing a file to llama.cpp so that random bytes, a wrong magic or a
truncated download give a precise message instead of a generic native load failure.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autoglm.engine import paths
from autoglm.engine.errors import InvalidModelError, ModelNotFoundError
from autoglm.engine.fs import write_cache
from autoglm.engine.models.gguf_header import Header, check_header

GGUF_MAGIC = b"GGUF"


@dataclass
class ModelFacts:
    """What the planner needs to know about a model, independent of the device."""

    path: str
    size: int
    architecture: str
    name: str
    quant: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    context_length: int
    n_params: int
    chat_template: str | None = None
    license: str | None = None

    def kv_bytes_per_token(self) -> int:
        """f16 K and V for every layer: what one token of context costs in memory."""
        head_dim = self.n_embd // max(self.n_head, 1)
        return 2 * self.n_layers * self.n_head_kv * head_dim * 2

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("chat_template")
        return data


def _cache_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _load_cache() -> dict[str, Any]:
    try:
        return json.loads((paths.cache_dir() / "gguf-facts.json").read_text())
    except (OSError, ValueError):
        return {}


def remember(path: str | Path, result: ModelFacts) -> None:
    """Cache ``result`` as the facts of ``path`` (a file just validated elsewhere and moved here)."""

    path = Path(path)
    prefix = f"{path.resolve()}|"
    cache = {k: v for k, v in _load_cache().items() if not k.startswith(prefix)}
    cache[_cache_key(path)] = {**asdict(result), "path": str(path)}
    write_cache(paths.cache_dir() / "gguf-facts.json", json.dumps(cache))


def facts(path: str | Path) -> ModelFacts:
    """``read_gguf`` with a cache keyed on (path, size, mtime): parsing a GGUF's vocabulary takes
    seconds, and a model file that changed on disk gets a different key and is read again."""
    path = Path(path)
    try:
        key = _cache_key(path)
    except OSError:
        return read_gguf(path)
    cached = _load_cache().get(key)
    if cached is not None:
        return ModelFacts(**cached)
    result = read_gguf(path)
    remember(path, result)
    return result


def _count(value: Any) -> int:
    """A count from the header: an integer, or the largest of a per-layer array (the KV cache is
    sized by the layer that needs most)."""
    if isinstance(value, tuple) and len(value) == 3 and value[2]:
        return max(value[2])
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a count of type {type(value).__name__}")
    return value


def quant_name(file_type: int | None) -> str:
    import gguf

    if file_type is None:
        return "unknown"
    try:
        return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"type{file_type}"


def read_gguf(path: str | Path) -> ModelFacts:
    """Validate ``path`` as a complete GGUF file and return its facts."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise InvalidModelError(f"{path} is not a file")
    size = path.stat().st_size
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise InvalidModelError(f"{path} is not a GGUF model (wrong magic bytes {magic!r}, expected b'GGUF')")
    header = check_header(path)  # bounded by the file's size; the vocabulary is never materialised
    if not header.tensors:
        raise InvalidModelError(f"{path} holds no tensors")
    try:
        end = header.data_end()
    except ValueError:
        raise InvalidModelError(f"{path} has a tensor of a type this llama.cpp does not know") from None
    if end > size:
        raise InvalidModelError(f"{path} is truncated: {size} bytes on disk, its tensors need {end}")
    try:
        return _facts(header, path, size)
    except (ValueError, TypeError, OverflowError) as exc:  # a value of the wrong type
        raise InvalidModelError(f"{path} has metadata of the wrong type ({type(exc).__name__}: "
                                f"{str(exc)[:200]})") from None


def _facts(header: Header, path: Path, size: int) -> ModelFacts:
    arch = str(header.value("general.architecture", "unknown"))
    n_head = _count(header.value(f"{arch}.attention.head_count", 0))
    template, licence = header.value("tokenizer.chat_template"), header.value("general.license")
    if template is not None and not isinstance(template, str):
        raise TypeError("tokenizer.chat_template is not text")
    facts = ModelFacts(
        path=str(path),
        size=size,
        architecture=arch,
        name=str(header.value("general.name", path.stem)),
        quant=quant_name(header.value("general.file_type")),
        n_layers=_count(header.value(f"{arch}.block_count", 0)),
        n_embd=_count(header.value(f"{arch}.embedding_length", 0)),
        n_head=n_head,
        n_head_kv=_count(header.value(f"{arch}.attention.head_count_kv", n_head)) or n_head,
        context_length=_count(header.value(f"{arch}.context_length", 2048)) or 2048,
        n_params=sum(elements for elements, _, _ in header.tensors),
        chat_template=template,
        license=licence if isinstance(licence, str) else None,
    )
    for name in ("n_layers", "n_embd", "n_head", "n_head_kv", "context_length"):
        if not 0 <= getattr(facts, name) < 1 << 31:
            raise ValueError(f"{name} is {getattr(facts, name)}")
    return facts
