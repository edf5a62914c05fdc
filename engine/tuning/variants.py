"""``autoglm tune MODEL --quants Q4_0,...``: re-quantize a model (llama.cpp's quantizer), measure
every version's speed (with the planned settings, in the measuring children) and quality (against
the original, the most precise version here: every variant derives from it), choose the fastest
inside the quality budget and keep the choice, which later runs of MODEL then follow.
"""

from __future__ import annotations

from collections.abc import Callable

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.loader import Prepared
from autoglm.engine.models import store
from autoglm.engine.models.quantize import TARGETS, quantize
from autoglm.engine.models.store import Manifest
from autoglm.engine.tuning import cache
from autoglm.engine.tuning.quality import MAX_KL, MIN_TOP1, Variant, choose, compare, log_probs
from autoglm.engine.tuning.runner import Children, base_config

Note = Callable[[str], None]


def derived(manifest: Manifest) -> list[Manifest]:
    """Installed re-quantizations of ``manifest`` (``models quantize`` records where they came from)."""
    prefix = f"quantize:{manifest.name}@"
    return [m for m in store.installed() if m.source.startswith(prefix)]


def parse_quants(text: str) -> list[str]:
    quants = [q.strip().upper() for q in text.split(",") if q.strip()]
    bad = [q for q in quants if q not in TARGETS]
    if bad or not quants:
        raise InvalidArgumentError(f"--quants takes a comma-separated list of {', '.join(TARGETS)}; got '{text}'")
    return quants


def measure(prepared: Prepared, quants: list[str], max_kl: float = MAX_KL, min_top1: float = MIN_TOP1,
            note: Note = lambda _: None) -> tuple[list[Variant], Variant, str]:
    original = prepared.model.manifest
    if original is None:
        raise InvalidArgumentError("--quants needs an installed model (`autoglm models import FILE` first)")
    if original.source.startswith("quantize:"):
        raise InvalidArgumentError(f"{original.name} is itself a re-quantization; tune the model it came from")
    have = {m.quant: m for m in derived(original)}
    for quant in quants:
        if quant != original.quant and quant not in have:
            note(f"quantizing {original.name} to {quant} (llama.cpp's quantizer)")
            made = quantize(original.name, quant)
            have[made.quant] = made
    versions = [original, *[m for q, m in sorted(have.items()) if q != original.quant]]
    threads = prepared.plan.threads
    reference = prepared.model.path
    tokens, ref_lp = log_probs(str(reference), threads)
    config = base_config(prepared)
    children = Children(str(reference), prepared.plan.gpu_layers)
    rows = []
    try:
        for manifest in versions:
            path = str(manifest.primary_path)
            children.close()  # a child per file
            children.model_path = path
            speed = children.measure(config)
            quality = None if manifest is original else compare(ref_lp, log_probs(path, threads, tokens)[1])
            rows.append(Variant(manifest.name, manifest.quant, speed.prefill if speed.ok else 0.0,
                                speed.decode if speed.ok else 0.0, quality))
            note(f"{manifest.quant:<8} prefill {speed.prefill:7.0f}  decode {speed.decode:6.1f} tok/s"
                 + (f"  KL {quality.kl:.4f}  top-1 {quality.top1:.1%}" if quality else "  (reference)"))
    finally:
        children.close()
    chosen, why = choose(rows, max_kl, min_top1)
    cache.store_variant(prepared.device, cache.model_key(prepared.model),
                        {"name": chosen.name, "reason": why, "variants": [r.to_dict() for r in rows]})
    return rows, chosen, why


__all__ = ["derived", "measure", "parse_quants"]
