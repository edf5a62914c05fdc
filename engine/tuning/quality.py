"""Is a faster quant good enough? Next-token distributions of each version of a model against the
most precise one on a fixed calibration text: mean KL divergence (nats per token) and how often
the top token agrees, as llama.cpp's ``perplexity --kl-divergence`` reports them. The gate is a
stated budget; the fastest version inside it is the one to run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np

from autoglm.engine.backends.llama_executor import LlamaExecutor
from autoglm.engine.backends.llamacpp import LlamaBackend
from autoglm.engine.errors import InvalidArgumentError

MAX_KL = 0.05  # nats per token: llama.cpp's Q4_0 of a 7B model is about this far from its F16
MIN_TOP1 = 0.90  # the same most likely next token at 9 positions in 10 or more
CALIBRATION_TOKENS = 320
# Prose, a list, numbers, code and dialogue: the kinds of text a desktop model is asked about.
CALIBRATION = """\
The river rose slowly through the night, and by morning the lower fields were under a sheet of brown water.
Farmers moved their animals to the ridge, where the old chapel stood, and waited for the rain to stop.
Shopping list: 2 kg of flour, 12 eggs, 500 g of butter, a litre of milk, three lemons and a bag of rice.
In 1969, 530 million people watched the first landing on the Moon; the mission lasted 8 days, 3 hours
and 18 minutes, and the crew brought back 21.5 kg of rock.
def fibonacci(n: int) -> list[int]:
    \"\"\"The first n Fibonacci numbers.\"\"\"
    out = [0, 1]
    while len(out) < n:
        out.append(out[-1] + out[-2])
    return out[:n]
"Are you coming to the meeting tomorrow?" asked Maria. "Only if it starts after ten," said Tom, "I have
to take the car to the garage first." She laughed and said that nothing ever started on time anyway.
To reset the router, hold the button on the back for ten seconds until the light blinks orange, then
wait two minutes and connect again using the password printed on the label underneath.
"""


@dataclass
class Quality:
    kl: float  # mean KL(reference || candidate), nats per token
    top1: float  # share of positions with the same most likely token
    tokens: int

    def passes(self, max_kl: float = MAX_KL, min_top1: float = MIN_TOP1) -> bool:
        return self.kl <= max_kl and self.top1 >= min_top1

    def to_dict(self) -> dict:
        return asdict(self)


def log_probs(path: str, threads: int, tokens: list[int] | None = None) -> tuple[list[int], np.ndarray]:
    """Log-softmax of the next-token logits at every position of ``tokens`` (one decode, all rows);
    without tokens, the calibration text as this model tokenizes it (the reference's, then reused)."""
    backend = LlamaBackend(path, threads=threads, gpu_layers=0, use_extra_bufts=False, use_mmap=True)
    tokens = tokens or backend.tokenize(CALIBRATION)[:CALIBRATION_TOKENS]
    executor = LlamaExecutor(backend.model, n_seq=1, ctx_per_seq=len(tokens) + 8, n_batch=len(tokens),
                             threads=threads)
    try:
        executor.decode([SimpleNamespace(token=t, pos=i, seq=0, logits=True) for i, t in enumerate(tokens)])
        logits = np.array(executor.logits_all(), dtype=np.float64)
    finally:
        executor.close()
    logits -= logits.max(axis=1, keepdims=True)
    return tokens, logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def compare(reference: np.ndarray, candidate: np.ndarray) -> Quality:
    if reference.shape != candidate.shape:
        raise InvalidArgumentError(f"the versions do not share a vocabulary ({reference.shape[1]} and "
                                   f"{candidate.shape[1]} tokens): no quality comparison")
    kl = (np.exp(reference) * (reference - candidate)).sum(axis=1)
    top1 = (reference.argmax(axis=1) == candidate.argmax(axis=1)).mean()
    return Quality(kl=float(max(kl.mean(), 0.0)), top1=float(top1), tokens=reference.shape[0])


@dataclass
class Variant:
    name: str
    quant: str
    prefill: float
    decode: float
    quality: Quality | None  # None: the reference itself

    def to_dict(self) -> dict:
        return asdict(self)


def choose(variants: list[Variant], max_kl: float = MAX_KL, min_top1: float = MIN_TOP1) -> tuple[Variant, str]:
    """The fastest version whose distributions stay inside the budget (the reference always does);
    speed is the geometric mean of prefill and decode, as the settings search scores it."""
    reference = next(v for v in variants if v.quality is None)

    def speed(v: Variant) -> float:
        return math.sqrt(v.prefill * v.decode) if v.prefill > 0 and v.decode > 0 else 0.0

    passing = [v for v in variants if v.quality is None or v.quality.passes(max_kl, min_top1)]
    best = max(passing, key=speed)
    budget = f"budget KL <= {max_kl:g} nats/token and top-1 >= {min_top1:.0%}"
    refused = [v for v in variants if v not in passing]
    if best is reference:
        why = f"{reference.name} ({reference.quant}): no other version is faster within the quality {budget}"
        if refused:
            r = max(refused, key=speed)
            rq = r.quality
            assert rq is not None  # refused ones were measured: the reference is never refused
            why += (f"; {r.quant} would be {speed(r) / speed(reference):.2f}x as fast but measured KL "
                    f"{rq.kl:.3f}, top-1 {rq.top1:.0%}")
        return reference, why
    q = best.quality
    assert q is not None  # best is not the reference, so it was measured
    gain = speed(best) / speed(reference)
    return best, (f"{best.name} ({best.quant}) instead of {reference.name} ({reference.quant}): {gain:.2f}x as fast "
                  f"(prefill {best.prefill:.0f} vs {reference.prefill:.0f} tok/s) at KL {q.kl:.3f} nats/token, "
                  f"top-1 agreement {q.top1:.0%} ({budget}; measured by `autoglm tune --quants`)")
