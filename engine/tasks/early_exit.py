"""Per-layer heads, exit rules and their calibration: the part of early exit that is pure numpy.

An exit head per layer is a softmax regression on that layer's pooled features, trained by
self-distillation: its targets are the final head's probabilities, so no extra labels are needed.
An exit rule decides after each layer whether an item is done. Three are measured on a held-out
split and the one that exits earliest within the accuracy budget is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("maxprob", "entropy", "patience")


@dataclass
class Head:
    weight: np.ndarray  # [H, C]
    bias: np.ndarray  # [C]
    mean: np.ndarray  # [H] feature standardization, from the training split
    scale: np.ndarray  # [H]

    def probs(self, features: np.ndarray) -> np.ndarray:
        logits = ((features - self.mean) / self.scale) @ self.weight + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def fit_head(features: np.ndarray, targets: np.ndarray, l2: float = 0.1, steps: int = 300,
             lr: float = 0.02, seed: int = 0, weights: np.ndarray | None = None) -> Head:
    """Softmax regression by full-batch Adam; ``targets`` are one-hot labels or soft probabilities.

    Written out because it is 20 lines of numpy and a second of work; pulling scikit-learn in for
    it would double the install for desktop and board users alike.
    """
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    x = (features - mean) / scale
    n, classes = len(x), targets.shape[1]
    rng = np.random.default_rng(seed)
    share = None if weights is None else (weights / weights.sum())[:, None].astype(np.float32)  # per example
    w = rng.normal(0, 0.01, (x.shape[1], classes)).astype(np.float32)
    b = np.zeros(classes, np.float32)
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    for t in range(1, steps + 1):
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - targets) / n if weights is None else (p - targets) * share
        g_w = x.T @ grad + l2 * w
        g_b = grad.sum(axis=0)
        for g, m, v in ((g_w, m_w, v_w), (g_b, m_b, v_b)):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
        w -= lr * (m_w / (1 - 0.9 ** t)) / (np.sqrt(v_w / (1 - 0.999 ** t)) + 1e-8)
        b -= lr * (m_b / (1 - 0.9 ** t)) / (np.sqrt(v_b / (1 - 0.999 ** t)) + 1e-8)
    return Head(w, b, mean.astype(np.float32), scale.astype(np.float32))


@dataclass
class ExitRule:
    kind: str  # "none" or one of RULES
    threshold: float = 1.0

    def done(self, probs: np.ndarray, streak: np.ndarray) -> np.ndarray:
        """Which rows exit now; ``streak`` counts consecutive layers with the same prediction."""
        if self.kind == "maxprob":
            return probs.max(axis=1) >= self.threshold
        if self.kind == "entropy":
            ent = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(axis=1) / np.log(probs.shape[1])
            return ent <= self.threshold
        if self.kind == "patience":
            return streak >= self.threshold
        return np.zeros(len(probs), dtype=bool)


def simulate(rule: ExitRule, layer_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a rule to recorded per-layer probabilities [L, N, C]: (predictions, exit layer 1-based)."""
    layers, n, _ = layer_probs.shape
    pred = np.full(n, -1)
    exit_at = np.full(n, layers)
    active = np.ones(n, dtype=bool)
    streak = np.zeros(n)
    last = np.full(n, -1)
    for i in range(layers):
        p = layer_probs[i]
        now = p.argmax(axis=1)
        streak = np.where(now == last, streak + 1, 1)
        last = now
        done = active & (rule.done(p, streak) | (i == layers - 1))
        pred[done], exit_at[done] = now[done], i + 1
        active &= ~done
    return pred, exit_at


def candidates(layers: int) -> list[ExitRule]:
    out = [ExitRule("maxprob", t) for t in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)]
    out += [ExitRule("entropy", t) for t in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)]
    out += [ExitRule("patience", float(t)) for t in range(2, layers)]
    return out


def calibrate(layer_probs: np.ndarray, labels: np.ndarray, budget: float) -> tuple[ExitRule, dict[str, dict]]:
    """The rule and threshold that exit earliest while held-out accuracy stays within ``budget``
    points of the full model's; with every rule's best, for the record."""
    layers = layer_probs.shape[0]
    full_acc = float((layer_probs[-1].argmax(axis=1) == labels).mean() * 100)
    best: dict[str, dict] = {}
    for rule in candidates(layers):
        pred, exit_at = simulate(rule, layer_probs)
        acc = float((pred == labels).mean() * 100)
        mean_exit = float(exit_at.mean())
        if acc >= full_acc - budget and mean_exit < best.get(rule.kind, {}).get("mean_exit", layers + 1):
            best[rule.kind] = {"threshold": rule.threshold, "accuracy": acc, "mean_exit": mean_exit}
    if not best:
        return ExitRule("none"), {"full_accuracy": {"accuracy": full_acc}}
    kind = min(best, key=lambda k: best[k]["mean_exit"])
    return ExitRule(kind, best[kind]["threshold"]), {**best, "full": {"accuracy": full_acc, "mean_exit": layers}}
