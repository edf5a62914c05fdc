"""The catalog's expected decode speed against the measured one, for every installed chat model.

Usage: python benchmarks/catalog_speeds.py

Each installed GGUF chat model is loaded alone and measured the way a server's catalog does (32
tokens, temperature 0). Then each model's figure is predicted from the *other* models' measurements
(leave one out), as the catalog predicts a model it has not measured, and the table shows both and
their ratio: the estimate must land within 25%, or the model's own measurement replaces it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoglm.engine import loader  # noqa: E402
from autoglm.engine.models import store  # noqa: E402
from autoglm.engine.models.catalog import Reference, expected_speed, remember_speed  # noqa: E402
from autoglm.engine.runtime import Runtime  # noqa: E402


def measure(name: str) -> Reference:
    prepared = loader.prepare(name)
    runtime = Runtime(name, lambda: loader.load_scheduled(prepared), prepared.device, plan=prepared.plan)
    try:
        return runtime.speed_reference()
    finally:
        runtime.close()


def main() -> None:
    models = [m.name for m in store.installed() if m.format == "gguf"]
    refs = [measure(name) for name in models]
    print("| model | size | measured tok/s | expected from the others | ratio | basis |")
    print("|---|---|---|---|---|---|")
    for ref in refs:
        others = [r for r in refs if r is not ref]
        rate, basis = expected_speed(ref.size, others, "chat", on_gpu=ref.on_gpu)
        ratio = f"{rate / ref.tokens_per_s:.2f}x" if rate else "-"
        print(f"| {ref.model} | {ref.size / 1e6:.0f} MB | {ref.tokens_per_s:.1f} | {rate or '-'} | {ratio} | {basis} |")
    device = loader.prepare(models[0]).device
    for ref in refs:
        remember_speed(device, ref)


if __name__ == "__main__":
    os.environ.setdefault("AUTOGLM_AUTOTUNE", "0")
    main()
