"""Learning from corrections: a label a user fixed joins the classifier's own examples, and the
classifier retrains from them as a new version of the same name (``models rollback`` undoes it).

The examples travel inside each version (``examples.jsonl``, in its manifest and hashed like the
heads), so a rollback also rolls back the corrections that version learned from, and a correction
of a text already among the examples replaces its label instead of adding a contradiction.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from filelock import FileLock

from autoglm.engine import paths
from autoglm.engine.backends.onnx.encoder import Encoder
from autoglm.engine.errors import InvalidArgumentError, InvalidModelError
from autoglm.engine.models import store
from autoglm.engine.models.store import Manifest
from autoglm.engine.tasks.classify import EXAMPLES_FILE, Classifier, train
from autoglm.engine.tasks.embed import open_encoder

MAX_TEXT_CHARS = 100_000
# A correction is a user saying "this one, exactly": it counts as this many ordinary examples in the
# fit. Corrections are the texts the classifier got wrong, the hardest ones; weighted like any other
# they were relearned about half the time (47% of 77 here), depending on the CPU's int8 rounding.
CORRECTION_WEIGHT = 4.0


def install(clf: Classifier, name: str, texts: list[str], labels: list[str],
            sources: list[str] | None = None) -> Manifest:
    """Install a trained classifier with the examples it learned from."""
    sources = sources or ["example"] * len(texts)
    examples = [{"text": t, "label": lab, "source": src} for t, lab, src in zip(texts, labels, sources, strict=True)]
    return clf.install(name, examples)


def examples_of(manifest: Manifest) -> list[dict[str, str]]:
    if EXAMPLES_FILE not in {f.path for f in manifest.files}:
        raise InvalidModelError(f"{manifest.name} {manifest.version} keeps no examples (zero-shot, or trained before "
                                "classifiers kept them): train it again with `autoglm classify train --examples`")
    lines = (manifest.directory / EXAMPLES_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def correct(name: str, corrected: list[tuple[str, str]],
            opener: Callable[[str, str], tuple[Manifest, Encoder]] = open_encoder) -> Manifest:
    """Retrain ``name`` with ``corrected`` (text, right label) and install it as its new version.

    One correction at a time per classifier, across processes (a file lock in the data folder): each
    reads the version the one before it installed, so four at once keep all four (without the lock
    each retrained the same old version and the last to install won)."""
    if not corrected:
        raise InvalidArgumentError("no corrections given")
    store.check_name(name)
    with FileLock(str(paths.tmp_dir() / f"correct-{name}.lock")):
        return _correct(name, corrected, opener)


def _correct(name: str, corrected: list[tuple[str, str]],
             opener: Callable[[str, str], tuple[Manifest, Encoder]]) -> Manifest:
    manifest = store.require(name)
    if manifest.format != "classifier":
        raise InvalidModelError(f"{name} is in {manifest.format} format, not a classifier")
    store.check_intact(manifest)
    clf = Classifier.load(manifest.directory)
    examples = examples_of(manifest)
    fixed: dict[str, str] = {}
    for text, label in corrected:
        text, label = str(text).strip(), str(label).strip()
        if not text or len(text) > MAX_TEXT_CHARS:
            raise InvalidArgumentError(f"a corrected text must have 1 to {MAX_TEXT_CHARS} characters")
        if label not in clf.labels:
            raise InvalidArgumentError(f"{label!r} is not one of {name}'s labels ({', '.join(clf.labels)}); "
                                       "to add a label, train again with examples of it")
        fixed[text] = label
    kept = [e for e in examples if e["text"] not in fixed]
    merged = kept + [{"text": t, "label": lab, "source": "correction"} for t, lab in fixed.items()]
    enc_manifest, encoder = opener(clf.encoder, clf.precision)
    retrained = train(encoder, enc_manifest, [e["text"] for e in merged], [e["label"] for e in merged],
                      budget=float(clf.report.get("budget", 1.0)),
                      weights=[CORRECTION_WEIGHT if e.get("source") == "correction" else 1.0 for e in merged])
    retrained.report["corrections"] = sum(e.get("source") == "correction" for e in merged)
    return retrained.install(name, merged)
