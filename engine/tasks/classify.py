"""Text classifiers on a converted encoder: trained on the device from labeled examples, or
zero-shot from label names; stored as models (format ``classifier``) so they survive restarts.

A trained classifier carries a head per layer; at run time an item leaves the batch at the first
layer whose exit rule fires, and tokens that receive little attention are dropped between layers.
Both are calibrated on a held-out split to stay within an accuracy budget; ``exact`` turns them
off so the gain is always measurable.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoglm.engine.backends.onnx.encoder import BATCH, Encoder, Shrink, batches
from autoglm.engine.errors import InvalidArgumentError, InvalidModelError
from autoglm.engine.fs import read_user_text
from autoglm.engine.models import store
from autoglm.engine.models.store import FileEntry, Manifest, Staging, sha256_file
from autoglm.engine.tasks.early_exit import ExitRule, Head, calibrate, fit_head
from autoglm.engine.tasks.embed import open_encoder

HELD_OUT = 0.2
PRUNE_ALPHAS = (0.8, 0.6, 0.4, 0.25)  # drop tokens receiving under alpha x a uniform share of attention
ZERO_SHOT_TEMPERATURE = 0.05
L2_GRID = (0.03, 0.1, 0.3, 1.0)  # chosen per data set on the held-out split (measured: 0.1-0.3 on reviews)
# Results under a classifier's review threshold are marked for a person to check: the lowest confidence
# above which its held-out predictions were right this often (zero-shot, with no held-out set: 0.5).
REVIEW_ACCURACY = 0.9
REVIEW_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
EXAMPLES_FILE = "examples.jsonl"  # a trained classifier keeps its examples: corrections retrain from them


@dataclass
class Prediction:
    text: str
    label: str
    confidence: float | None  # None: labeled by a tuned prompt, which measures none
    exit_layer: int  # 0: not an encoder's
    review: bool = False  # confidence under the classifier's review threshold: a person should check it


@dataclass
class Classifier:
    labels: list[str]
    encoder: str  # store name of the encoder
    encoder_version: str
    precision: str
    heads: list[Head | None]  # one per layer; only the last for zero-shot
    rule: ExitRule = field(default_factory=lambda: ExitRule("none"))
    prune_alpha: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)
    review_below: float = REVIEW_GRID[0]

    def classify(self, encoder: Encoder, texts: list[str], exact: bool = False,
                 batch: int = BATCH) -> tuple[list[Prediction], int]:
        """Labels for ``texts`` (in order) and how many were truncated to the encoder's maximum."""
        tok = encoder.tokenize(texts)
        out: list[Prediction | None] = [None] * len(texts)
        layers = len(self.heads)
        for idx in batches(tok.ids, batch):
            ids, mask = encoder.pad([tok.ids[i] for i in idx])
            streak, last = np.zeros(len(idx)), np.full(len(idx), -1)

            def visit(i: int, hidden: np.ndarray, m: np.ndarray, importance: np.ndarray, rows: np.ndarray,
                      idx: np.ndarray = idx, streak: np.ndarray = streak, last: np.ndarray = last) -> Shrink | None:
                final = i == layers - 1
                head = self.heads[i]
                if head is None or (exact and not final):
                    return None
                probs = head.probs(encoder.pool(hidden, m))
                now = probs.argmax(axis=1)
                streak[rows] = np.where(now == last[rows], streak[rows] + 1, 1)
                last[rows] = now
                done = np.ones(len(rows), bool) if final else (not exact) & self.rule.done(probs, streak[rows])
                for r in np.flatnonzero(done):
                    k = idx[rows[r]]
                    confidence = float(probs[r, now[r]])
                    out[k] = Prediction(texts[k], self.labels[now[r]], confidence, i + 1,
                                        review=confidence < self.review_below)
                keep = None
                if self.prune_alpha and not exact and not final:
                    share = self.prune_alpha / np.maximum(m.sum(axis=1, keepdims=True), 1)
                    keep = importance >= share
                    keep[:, 0] = True  # [CLS] stays
                return Shrink(drop_rows=done, keep_tokens=keep)

            encoder.run(ids, mask, visit)
        return [p for p in out if p is not None], tok.truncated

    # --- storage -------------------------------------------------------------------------------
    def save(self, directory: Path, examples: list[dict[str, str]] | None = None) -> list[FileEntry]:
        arrays = {}
        for i, head in enumerate(self.heads):
            if head is not None:
                for key, value in asdict(head).items():
                    arrays[f"{i}.{key}"] = value
        np.savez(directory / "heads.npz", **arrays)
        meta = {"labels": self.labels, "encoder": self.encoder, "encoder_version": self.encoder_version,
                "precision": self.precision, "layers": len(self.heads), "rule": asdict(self.rule),
                "prune_alpha": self.prune_alpha, "report": self.report, "review_below": self.review_below}
        (directory / "classifier.json").write_text(json.dumps(meta, indent=2))
        names = ["classifier.json", "heads.npz"]
        if examples:
            (directory / EXAMPLES_FILE).write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples),
                                                  encoding="utf-8")
            names.append(EXAMPLES_FILE)
        return [FileEntry(n, sha256_file(directory / n), (directory / n).stat().st_size) for n in names]

    @classmethod
    def load(cls, directory: Path) -> Classifier:
        meta = json.loads((directory / "classifier.json").read_text())
        with np.load(directory / "heads.npz") as arrays:
            heads = [Head(*(arrays[f"{i}.{k}"] for k in ("weight", "bias", "mean", "scale")))
                     if f"{i}.weight" in arrays else None for i in range(meta["layers"])]
        return cls(meta["labels"], meta["encoder"], meta["encoder_version"], meta["precision"], heads,
                   ExitRule(**meta["rule"]), meta["prune_alpha"], meta["report"],
                   meta.get("review_below", REVIEW_GRID[0]))

    def install(self, name: str, examples: list[dict[str, str]] | None = None) -> Manifest:
        """A new version of ``name``; ``examples`` (text, label, source) are kept beside the heads."""
        store.check_name(name)
        with Staging() as stage:
            entries = self.save(stage.dir, examples)
            kind = "trained" if self.heads[0] is not None else "zero-shot"
            version = sha256_file(stage.dir / "heads.npz")[:12]
            manifest = Manifest(name=name, version=version, source=f"{kind}:{self.encoder}@{self.encoder_version}",
                                format="classifier", files=entries, primary="classifier.json",
                                quant=self.precision, architecture=f"{len(self.labels)} labels",
                                size=sum(e.size for e in entries))
            return stage.commit(manifest)


EncoderOpener = Callable[[str, str], tuple[Manifest, Encoder]]


def open_classifier(name: str, precision: str | None = None,
                    opener: EncoderOpener = open_encoder) -> tuple[Classifier, Encoder]:
    """The stored classifier ``name`` with its encoder (``opener`` lets the runtime hand a cached one)."""
    manifest = store.require(name)
    if manifest.format != "classifier":
        raise InvalidModelError(f"{name} is in {manifest.format} format, not a classifier "
                                "(`autoglm classify train` makes one)")
    store.check_intact(manifest)
    clf = Classifier.load(manifest.directory)
    enc_manifest, encoder = opener(clf.encoder, precision or clf.precision)
    if enc_manifest.version != clf.encoder_version:
        raise InvalidModelError(f"{name} was trained on {clf.encoder} {clf.encoder_version}, but "
                                f"{enc_manifest.version} is current: retrain it or `models rollback {clf.encoder}`")
    return clf, encoder


# --- examples -------------------------------------------------------------------------------------
MAX_EXAMPLES_BYTES = 256 << 20


def load_examples(path: str | Path, min_labels: int = 2) -> tuple[list[str], list[str]]:
    """text,label rows from a CSV (with a header) or JSONL file; clear errors for the usual mistakes.
    ``min_labels``: 2 to train a classifier; corrections may all fix to one label (1)."""
    raw = read_user_text(path, MAX_EXAMPLES_BYTES, "text,label examples file")
    return parse_examples(raw, str(path), min_labels)


def parse_examples(raw: str, name: str, min_labels: int = 2) -> tuple[list[str], list[str]]:
    """The rows of an examples file's text; ``name`` (its file name) picks JSONL or CSV and labels errors."""
    path = Path(name)
    if not raw.strip():
        raise InvalidArgumentError(f"{path} is empty: expected text,label examples (CSV with a header, or JSONL)")
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson") or raw.lstrip().startswith("{"):
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    raise InvalidArgumentError(f"{path}:{n}: not a JSON object") from None
                if not isinstance(row, dict):
                    raise InvalidArgumentError(f"{path}:{n}: not a JSON object")
                rows.append(row)
        columns = sorted({k for r in rows for k in r})
    else:
        reader = csv.DictReader(raw.splitlines())
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        rows = [{(k or "").strip().lower(): v for k, v in r.items()} for r in reader]
    for needed in ("text", "label"):
        if needed not in columns:
            raise InvalidArgumentError(f"{path} has no '{needed}' column (found: {', '.join(columns) or 'none'}); "
                                       "expected text,label")
    pairs = [(str(r.get("text") or "").strip(), str(r.get("label") or "").strip()) for r in rows]
    pairs = [(t, lab) for t, lab in pairs if t and lab]
    if not pairs:
        raise InvalidArgumentError(f"{path} has no rows with both a text and a label")
    labels = sorted({lab for _, lab in pairs})
    if len(labels) < min_labels:
        raise InvalidArgumentError(f"{path} has only one label ('{labels[0]}'); a classifier needs at least two")
    return [t for t, _ in pairs], [lab for _, lab in pairs]


def split(labels: np.ndarray, held_out: float = HELD_OUT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train / held-out indices with a fixed seed."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    hold: list[int] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(len(idx) * held_out))) if len(idx) > 1 else 0
        hold.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train)), np.sort(np.array(hold))


# --- training -------------------------------------------------------------------------------------
def train(encoder: Encoder, enc_manifest: Manifest, texts: list[str], labels: list[str],
          budget: float = 1.0, seed: int = 0, weights: list[float] | None = None) -> Classifier:
    """Heads for every layer from labeled examples, then the exit rule and pruning calibrated
    on a held-out split so accuracy stays within ``budget`` points of the full model.
    ``weights``: how much each example counts in the fit (a user's correction counts more)."""
    if budget < 0 or budget > 100:
        raise InvalidArgumentError("--budget is in accuracy points, between 0 and 100")
    started = time.perf_counter()
    names = sorted(set(labels))
    y = np.array([names.index(lab) for lab in labels])
    tr, ho = split(y, seed=seed)
    if len(ho) < len(names):
        raise InvalidArgumentError(f"too few examples ({len(texts)}) to hold some out per label; give at least "
                                   f"{2 * len(names)}, better a few dozen per label")
    feats, truncated = encoder.layer_features(texts)  # [L, N, H], exact
    onehot = np.eye(len(names), dtype=np.float32)[y]
    w = None if weights is None else np.asarray(weights, dtype=np.float32)[tr]
    fits = {l2: fit_head(feats[-1][tr], onehot[tr], l2=l2, seed=seed, weights=w) for l2 in L2_GRID}
    l2 = max(fits, key=lambda k: (fits[k].probs(feats[-1][ho]).argmax(1) == y[ho]).mean())
    final = fits[l2]
    teacher = final.probs(feats[-1][tr])  # self-distillation: the final head teaches every layer
    heads: list[Head | None] = [fit_head(feats[i][tr], teacher, l2=l2, seed=seed, weights=w)
                                for i in range(len(feats) - 1)]
    heads.append(final)
    held_probs = np.stack([h.probs(feats[i][ho]) for i, h in enumerate(heads) if h is not None])
    rule, measured = calibrate(held_probs, y[ho], budget)
    clf = Classifier(names, enc_manifest.name, enc_manifest.version, encoder.precision, heads, rule)
    full_acc = measured["full"]["accuracy"] if "full" in measured else float(
        (held_probs[-1].argmax(1) == y[ho]).mean() * 100)
    clf.prune_alpha, prune_report = _calibrate_pruning(clf, encoder, [texts[i] for i in ho], y[ho],
                                                       full_acc - budget)
    clf.review_below = review_threshold(held_probs[-1], y[ho])
    clf.report = {"examples": len(texts), "held_out": len(ho), "truncated": truncated, "budget": budget, "l2": l2,
                  "rules": measured, "chosen": asdict(rule), "pruning": prune_report,
                  "train_seconds": round(time.perf_counter() - started, 2)}
    return clf


def review_threshold(probs: np.ndarray, y: np.ndarray) -> float:
    """The lowest confidence above which held-out predictions were right ``REVIEW_ACCURACY`` of the time."""
    confidence, right = probs.max(axis=1), probs.argmax(axis=1) == y
    for t in REVIEW_GRID:
        above = confidence >= t
        if above.any() and right[above].mean() >= REVIEW_ACCURACY:
            return t
    return REVIEW_GRID[-1]


def _calibrate_pruning(clf: Classifier, encoder: Encoder, texts: list[str], y: np.ndarray,
                       floor: float) -> tuple[float, dict[str, float]]:
    """The most aggressive token-drop threshold whose held-out accuracy (with early exit on)
    stays at or above ``floor``; 0 (off) when none does."""
    tried = {}
    chosen = 0.0
    for alpha in sorted(PRUNE_ALPHAS):
        clf.prune_alpha = alpha
        preds, _ = clf.classify(encoder, texts)
        acc = float(np.mean([clf.labels.index(p.label) == t for p, t in zip(preds, y, strict=True)]) * 100)
        tried[str(alpha)] = acc
        if acc >= floor:
            chosen = alpha
        else:
            break
    clf.prune_alpha = 0.0
    return chosen, tried


def zero_shot(encoder: Encoder, enc_manifest: Manifest, labels: dict[str, str | None]) -> Classifier:
    """A head from the label names' own embeddings (and descriptions, when given): cosine
    similarity, sharpened into probabilities. Runs the full encoder: no per-layer heads to exit with."""
    names = list(labels)
    if len(names) < 2:
        raise InvalidArgumentError("zero-shot needs at least two labels, e.g. --labels sports,politics")
    prompts = [f"{n}: {d}" if d else n for n, d in labels.items()]
    # the staged graphs' last layer: the features classify() compares them with come from the same path
    emb = encoder.layer_features(prompts)[0][-1]
    dim = emb.shape[1]
    head = Head(weight=(emb.T / ZERO_SHOT_TEMPERATURE).astype(np.float32), bias=np.zeros(len(names), np.float32),
                mean=np.zeros(dim, np.float32), scale=np.ones(dim, np.float32))
    heads: list[Head | None] = [None] * (encoder.layers_count - 1) + [head]
    return Classifier(names, enc_manifest.name, enc_manifest.version, encoder.precision, heads)


def parse_labels(spec: str) -> dict[str, str | None]:
    """``a,b,c`` or ``a=description,b=description``."""
    out: dict[str, str | None] = {}
    for part in spec.split(","):
        name, _, desc = part.partition("=")
        if name.strip():
            out[name.strip()] = desc.strip() or None
    return out


__all__ = ["Classifier", "Prediction", "load_examples", "open_classifier", "parse_labels", "train",
           "zero_shot"]
