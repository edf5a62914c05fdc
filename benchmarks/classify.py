"""Classification speed and accuracy, side by side in one run, one table per data set.

    (a) sentence-transformers FP32 on PyTorch CPU + the same trained head (what a user would pick)
    (b) our FP32 ONNX encoder, exact          (c) our INT8 encoder, exact
    (d) INT8 with early exit                  (e) INT8 with early exit and token pruning

Heads are trained on each data set's training split (FP32 heads for a and b, INT8 heads for c-e),
accuracy is on the test split. texts/s is batched (32); latency is one text per call, over a
fixed sample. Needs ``pip install torch==2.13.0 sentence-transformers`` for (a); without it (a)
is reported as missing. Run: ``python -m benchmarks.classify [--threads N] [--latency-sample N]``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from autoglm.engine.tasks.classify import Classifier, train
from autoglm.engine.tasks.embed import open_encoder
from benchmarks.datasets import Dataset, bbc_news, rotten_tomatoes


def _timed(fn: Callable[[list[str]], list[str]], texts: list[str], sample: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    labels = fn(texts)
    elapsed = time.perf_counter() - started
    lat = []
    for text in sample:
        t = time.perf_counter()
        fn([text])
        lat.append((time.perf_counter() - t) * 1000)
    return {"labels": labels, "tps": len(texts) / elapsed, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99))}


def _peer(data: Dataset, clf_fp32: Classifier, threads: int) -> Callable[[list[str]], list[str]] | None:
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    from autoglm.engine.models import store

    torch.set_num_threads(threads)
    folder = store.require(clf_fp32.encoder.removesuffix("-onnx")).directory
    model = SentenceTransformer(str(folder), device="cpu")
    head = clf_fp32.heads[-1]

    def run(texts: list[str]) -> list[str]:
        with torch.inference_mode():
            emb = model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
        return [clf_fp32.labels[i] for i in head.probs(emb).argmax(axis=1)]

    return run


def bench(data: Dataset, threads: int, sample_size: int) -> None:
    manifest, enc32 = open_encoder(None, "fp32", threads)
    _, enc8 = open_encoder(None, "int8", threads)
    clf32 = train(enc32, manifest, data.train_texts, data.train_labels)
    clf8 = train(enc8, manifest, data.train_texts, data.train_labels)
    alpha = clf8.prune_alpha
    sample = data.test_texts[:sample_size]

    def ours(clf: Classifier, enc, exact: bool, prune: float) -> Callable[[list[str]], list[str]]:
        def run(texts: list[str]) -> list[str]:
            clf.prune_alpha = prune
            preds, _ = clf.classify(enc, texts, exact=exact)
            run.exits.extend(p.exit_layer for p in preds)  # type: ignore[attr-defined]
            return [p.label for p in preds]

        run.exits = []  # type: ignore[attr-defined]
        return run

    layers = enc8.layers_count
    systems: list[tuple[str, Callable[[list[str]], list[str]] | None]] = [
        ("(a) sentence-transformers FP32, PyTorch", _peer(data, clf32, threads)),
        ("(b) ONNX FP32 exact", ours(clf32, enc32, True, 0.0)),
        ("(c) ONNX INT8 exact", ours(clf8, enc8, True, 0.0)),
        (f"(d) INT8 + early exit ({clf8.rule.kind} {clf8.rule.threshold})", ours(clf8, enc8, False, 0.0)),
        (f"(e) INT8 + exit + pruning (alpha {alpha or 'off'})", ours(clf8, enc8, False, alpha)),
    ]
    print(f"\n## {data.name}: train {len(data.train_texts)}, test {len(data.test_texts)}, {threads} threads, "
          f"latency over {len(sample)} single texts")
    print(f"{'system':<46}{'accuracy':>9}{'mean exit':>10}{'texts/s':>9}{'vs (a)':>8}{'p50 ms':>8}{'p99 ms':>8}")
    base = None
    for name, fn in systems:
        if fn is None:
            print(f"{name:<46}  (not installed: pip install torch==2.13.0 sentence-transformers)")
            continue
        r = _timed(fn, data.test_texts, sample)
        acc = float(np.mean([a == b for a, b in zip(r["labels"], data.test_labels, strict=True)]) * 100)
        exits = getattr(fn, "exits", None)
        mean_exit = float(np.mean(exits[: len(data.test_texts)])) if exits else layers
        base = base or r["tps"]
        print(f"{name:<46}{acc:>8.1f}%{mean_exit:>10.2f}{r['tps']:>9.1f}{r['tps'] / base:>7.2f}x"
              f"{r['p50']:>8.1f}{r['p99']:>8.1f}")
    print(f"training (INT8, all heads + calibration): {clf8.report['train_seconds']:.1f}s; held-out rules: "
          + ", ".join(f"{k} {v.get('accuracy', 0):.1f}%/{v.get('mean_exit', 0):.2f}" for k, v in
                      clf8.report["rules"].items()) + f"; pruning tried {clf8.report['pruning']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--latency-sample", type=int, default=100)
    parser.add_argument("--only", choices=["bbc", "rt"])
    args = parser.parse_args()
    for key, load in (("bbc", bbc_news), ("rt", rotten_tomatoes)):
        if args.only in (None, key):
            bench(load(), args.threads, args.latency_sample)


if __name__ == "__main__":
    main()
