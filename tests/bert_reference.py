"""A plain numpy BERT forward pass (float64), the reference the ONNX graphs are checked against."""

from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf)


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def forward(weights: dict[str, np.ndarray], config: dict, ids: list[int]) -> list[np.ndarray]:
    """Hidden states after each layer for one unpadded sequence: a list of [T, H] arrays."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    t = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
    x = _ln(x + w["embeddings.token_type_embeddings.weight"][0], w["embeddings.LayerNorm.weight"],
            w["embeddings.LayerNorm.bias"], eps)
    out = []
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return h @ w[f"{p}{name}.weight"].T + w[f"{p}{name}.bias"]

        d = x.shape[1] // heads
        q, k, v = (lin(x, f"attention.self.{n}").reshape(t, heads, d).transpose(1, 0, 2)
                   for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(1, 0, 2).reshape(t, -1)
        x = _ln(lin(ctx, "attention.output.dense") + x, w[f"{p}attention.output.LayerNorm.weight"],
                w[f"{p}attention.output.LayerNorm.bias"], eps)
        mid = lin(x, "intermediate.dense")
        mid = 0.5 * mid * (1 + _erf(mid / math.sqrt(2)))
        x = _ln(lin(mid, "output.dense") + x, w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"], eps)
        out.append(x)
    return out
