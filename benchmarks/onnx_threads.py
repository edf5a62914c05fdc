"""onnxruntime thread spinning with chained per-layer sessions, measured side by side.

Each stage of the encoder is its own session; with spinning on, an idle session's pool keeps
spinning while the next one works. Prints texts/s for INT8 exact with spinning off (our default)
and on, alternating runs, medians. Run: ``python -m benchmarks.onnx_threads``.
"""

from __future__ import annotations

import os
import statistics
import time

from autoglm.engine.backends.onnx.encoder import Encoder
from autoglm.engine.tasks.embed import encoder_manifest
from benchmarks.datasets import bbc_news, rotten_tomatoes


def main(reps: int = 3) -> None:
    threads = os.cpu_count() or 1
    directory = encoder_manifest(None).directory
    encoders = {"spinning off (default)": Encoder(directory, "int8", threads, spinning=False),
                "spinning on (onnxruntime's default)": Encoder(directory, "int8", threads, spinning=True)}
    for data, n in ((rotten_tomatoes(), 600), (bbc_news(), 120)):
        texts = data.test_texts[:n]
        times: dict[str, list[float]] = {k: [] for k in encoders}
        for _ in range(reps):
            for name, enc in encoders.items():
                started = time.perf_counter()
                enc.embed(texts)
                times[name].append(time.perf_counter() - started)
        print(f"\n## {data.name}: {len(texts)} texts, INT8 exact, {threads} threads, median of {reps}")
        base = statistics.median(times["spinning off (default)"])
        for name, ts in times.items():
            print(f"{name:<38}{len(texts) / statistics.median(ts):>9.1f} texts/s{base / statistics.median(ts):>7.2f}x")


if __name__ == "__main__":
    main()
