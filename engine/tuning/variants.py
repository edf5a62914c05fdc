"""``autoglm tune MODEL --quants Q4_0,...``: the model's other versions, measured for speed (with
the planned settings, in the measuring children) and quality (against the most precise version
made from the original weights), the fastest inside the quality budget chosen and kept; later
runs of MODEL then follow it.

Where the versions come from: a model pulled from a Hugging Face repo takes the repo's own files
of those quants (same commit), quantized from the original weights; a quant the repo does not
offer, or any model from elsewhere, is re-quantized from the installed file (llama.cpp's
quantizer), which can only lose precision, so such a version is never the reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.loader import Prepared
from autoglm.engine.models import store
from autoglm.engine.models.manager import pull
from autoglm.engine.models.quantize import TARGETS, quantize
from autoglm.engine.models.sources import hf
from autoglm.engine.models.store import Manifest
from autoglm.engine.tuning import cache
from autoglm.engine.tuning.quality import MAX_KL, MIN_TOP1, Variant, choose, compare, log_probs
from autoglm.engine.tuning.runner import Children, base_config

Note = Callable[[str], None]


# most precise first: what the reference is picked by (llama.cpp's type names, as repos label their files)
PRECISION = ("F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S",
             "Q4_1", "Q4_0", "IQ4_XS", "IQ4_NL", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K")
_HF_SOURCE = re.compile(r"^hf:(?P<repo>[^@]+)@(?P<commit>[0-9a-f]+):")


def derived(manifest: Manifest) -> list[Manifest]:
    """Installed re-quantizations of ``manifest`` (``models quantize`` records where they came from)."""
    prefix = f"quantize:{manifest.name}@"
    return [m for m in store.installed() if m.source.startswith(prefix)]


def hf_origin(manifest: Manifest) -> tuple[str, str] | None:
    """(repo, commit) of a model pulled from a Hugging Face repo."""
    m = _HF_SOURCE.match(manifest.source)
    return (m["repo"], m["commit"]) if m else None


def siblings(manifest: Manifest) -> list[Manifest]:
    """Installed files of the same repo and commit in other quants: made from the same original weights."""
    origin = hf_origin(manifest)
    return [m for m in store.installed()
            if origin and m.name != manifest.name and m.quant != manifest.quant and hf_origin(m) == origin]


def parse_quants(text: str) -> list[str]:
    quants = [q.strip().upper() for q in text.split(",") if q.strip()]
    bad = [q for q in quants if q not in PRECISION]
    if bad or not quants:
        raise InvalidArgumentError(f"--quants takes a comma-separated list of quant types such as "
                                   f"{', '.join(TARGETS)}; got '{text}'")
    return quants


def _rank(quant: str) -> int:
    return PRECISION.index(quant) if quant in PRECISION else len(PRECISION)


def versions(original: Manifest, quants: list[str], note: Note) -> tuple[list[Manifest], Manifest]:
    """Every installed version of ``original`` once the asked-for ones are fetched or made, and
    the reference among them: the most precise one made from the original weights."""
    from_weights = {m.quant: m for m in siblings(original)}
    made = {m.quant: m for m in derived(original)}
    origin = hf_origin(original)
    offered: set[str] = set()
    wanted = [q for q in quants if q != original.quant and q not in from_weights]
    if origin is not None and wanted:
        offered = {f.quant for f in hf.list_files(origin[0], origin[1])[1]}
    for quant in wanted:  # all checked before anything is fetched or made
        if quant not in offered and quant not in made and quant not in TARGETS:
            where = (f"{origin[0]} offers {', '.join(sorted(offered)) or 'no other quant'}; " if origin else
                     f"{original.name} is not from an hf: repository, so its versions are re-quantized, and ")
            raise InvalidArgumentError(f"--quants {quant}: {where}llama.cpp's quantizer makes {', '.join(TARGETS)}")
    for quant in wanted:
        if quant in offered:
            assert origin is not None  # only an hf: origin offers versions
            note(f"downloading {quant} from {origin[0]} (quantized from the original weights)")
            from_weights[quant] = pull(f"hf:{origin[0]}@{origin[1]}:{quant}")
        elif quant not in made:
            note(f"quantizing {original.name} to {quant} (llama.cpp's quantizer)")
            made[quant] = quantize(original.name, quant)
    reference = min([original, *from_weights.values()], key=lambda m: (_rank(m.quant), m is not original))
    others = {**made, **from_weights}  # a repo's own file beats a re-quantization of the same type
    return [reference, *[m for q, m in sorted(others.items()) if m is not reference and q != original.quant],
            *([original] if original is not reference else [])], reference


def measure(prepared: Prepared, quants: list[str], max_kl: float = MAX_KL, min_top1: float = MIN_TOP1,
            note: Note = lambda _: None) -> tuple[list[Variant], Variant, str]:
    original = prepared.model.manifest
    if original is None:
        raise InvalidArgumentError("--quants needs an installed model (`autoglm models import FILE` first)")
    if original.source.startswith("quantize:"):
        raise InvalidArgumentError(f"{original.name} is itself a re-quantization; tune the model it came from")
    measured, reference = versions(original, quants, note)
    threads = prepared.plan.threads
    tokens, ref_lp = log_probs(str(reference.primary_path), threads)
    config = base_config(prepared)
    children = Children(str(reference.primary_path), prepared.plan.gpu_layers)
    rows = []
    try:
        for manifest in measured:
            path = str(manifest.primary_path)
            children.close()  # a child per file
            children.model_path = path
            speed = children.measure(config)
            quality = None if manifest is reference else compare(ref_lp, log_probs(path, threads, tokens)[1])
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


__all__ = ["PRECISION", "derived", "hf_origin", "measure", "parse_quants", "siblings", "versions"]
