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
from autoglm.engine.models.gguf_header import check_header

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


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
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
    check_header(path)  # before the gguf reader walks what the header declares
    import gguf

    try:
        reader = gguf.GGUFReader(path, "r")
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as exc:  # the reader raises many kinds on malformed headers
        raise InvalidModelError(f"{path} is a damaged GGUF file ({type(exc).__name__}: {exc})") from None
    if not reader.tensors:
        raise InvalidModelError(f"{path} holds no tensors")
    if end > size:
        raise InvalidModelError(f"{path} is truncated: {size} bytes on disk, its tensors need {end}")
    try:
        check_tokenizer(reader)
        return _facts(reader, path, size)
    except (ValueError, TypeError, OverflowError, IndexError, AttributeError) as exc:  # a value of the wrong type
        raise InvalidModelError(f"{path} has metadata of the wrong type ({type(exc).__name__}: "
                                f"{str(exc)[:200]})") from None
    except _BadTokenizer as exc:
        raise InvalidModelError(f"{path} has a broken tokenizer: {exc}; llama.cpp would abort on it") from None


class _BadTokenizer(Exception):
    pass


# Every token id the metadata may name (llama-vocab.cpp reads these and indexes the vocabulary with
# them without a bounds check: an id past the end aborts the whole process).
SPECIAL_IDS = ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask", "cls", "sep",
               "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep", "prefix", "suffix", "middle")
_INTS = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64", "INT64"}


def _type_name(reader: Any, key: str) -> str:
    f = reader.fields[key]
    return f.types[0].name if f.types else "?"


def check_tokenizer(reader: Any) -> None:
    """What llama.cpp indexes without bounds: special token ids against the vocabulary, and the
    per-token arrays (types, scores) against its length, each of the type llama.cpp reads."""
    fields = reader.fields
    if "tokenizer.ggml.tokens" not in fields:
        return  # no vocabulary: llama.cpp refuses such a file with an error of its own
    if _type_name(reader, "tokenizer.ggml.tokens") != "ARRAY":
        raise _BadTokenizer("tokenizer.ggml.tokens is not a list")
    n_vocab = len(fields["tokenizer.ggml.tokens"].data)
    if n_vocab == 0:
        raise _BadTokenizer("the vocabulary is empty")
    for name in SPECIAL_IDS:
        key = f"tokenizer.ggml.{name}_token_id"
        if key not in fields:
            continue
        if _type_name(reader, key) not in _INTS:
            raise _BadTokenizer(f"{key} is a {_type_name(reader, key).lower()}, not a token id")
        value = int(fields[key].contents())
        if not 0 <= value < n_vocab:
            raise _BadTokenizer(f"{key} is {value}, outside the vocabulary of {n_vocab} tokens")
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if key in fields:
            if _type_name(reader, key) != "ARRAY":
                raise _BadTokenizer(f"{key} is not a list")
            if len(fields[key].data) != n_vocab:
                raise _BadTokenizer(f"{key} has {len(fields[key].data)} entries for {n_vocab} tokens")


def _facts(reader: Any, path: Path, size: int) -> ModelFacts:
    arch = str(_field(reader, "general.architecture", "unknown"))
    n_head = int(_field(reader, f"{arch}.attention.head_count", 0) or 0)
    template, licence = _field(reader, "tokenizer.chat_template"), _field(reader, "general.license")
    if template is not None and not isinstance(template, str):
        raise TypeError("tokenizer.chat_template is not text")
    facts = ModelFacts(
        path=str(path),
        size=size,
        architecture=arch,
        name=str(_field(reader, "general.name", path.stem)),
        quant=quant_name(_field(reader, "general.file_type")),
        n_layers=int(_field(reader, f"{arch}.block_count", 0) or 0),
        n_embd=int(_field(reader, f"{arch}.embedding_length", 0) or 0),
        n_head=n_head,
        n_head_kv=int(_field(reader, f"{arch}.attention.head_count_kv", n_head) or n_head),
        context_length=int(_field(reader, f"{arch}.context_length", 2048) or 2048),
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        chat_template=template,
        license=licence if isinstance(licence, str) else None,
    )
    for name in ("n_layers", "n_embd", "n_head", "n_head_kv", "context_length"):
        if not 0 <= getattr(facts, name) < 1 << 31:
            raise ValueError(f"{name} is {getattr(facts, name)}")
    return facts
