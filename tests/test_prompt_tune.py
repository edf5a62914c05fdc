"""Prompts that tune themselves: candidates measured on held-out labeled examples, the best saved
as a versioned model and used by classify/extract; on the real chat model and Rotten Tomatoes."""

from __future__ import annotations

import csv
import json
import re

import pytest

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.tasks.prompt_tune import label_grammar, load_tuning_examples, score, split_examples
from tests.conftest import run_cli

PEOPLE = [("Ann Smith", 34, "Oslo"), ("Bo Lee", 51, "Lyon"), ("Mia Cruz", 28, "Quito"), ("Tom Berg", 45, "Bergen"),
          ("Ida Holm", 62, "Malmo"), ("Raj Patel", 39, "Leeds"), ("Eva Novak", 23, "Brno"),
          ("Luis Ortega", 57, "Cusco"), ("Kim Park", 31, "Busan"), ("Olu Ade", 44, "Lagos"),
          ("Sara Kahn", 36, "Haifa"), ("Jon Roe", 70, "Perth")]
FORMS = ["{n}, {a}, lives in {c}.", "{n} is {a} years old and lives in {c}.",
         "Born {a} years ago, {n} now calls {c} home.", "{c} resident {n} ({a}) joined the club."]


def test_split_is_disjoint_and_measures_every_label():
    examples = [{"text": f"t{i}", "answer": "a" if i % 4 else "b"} for i in range(40)]
    pool, held = split_examples(examples, evaluate=10)
    assert len(held) == 10 and len(pool) == 30 and not {e["text"] for e in pool} & {e["text"] for e in held}
    assert {e["answer"] for e in held} == {"a", "b"}
    with pytest.raises(InvalidArgumentError, match="too few to tune on"):
        split_examples(examples[:5], evaluate=10)


def test_scores_and_grammar():
    assert score("classify", "a", "a") == 1 and score("classify", "b", "a") == 0
    assert score("extract", {"x": 1, "y": 2}, {"x": 1, "y": 3}) == 0.5 and score("extract", None, {"x": 1}) == 0
    assert label_grammar(["fresh", 'we"ird']) == 'root ::= "fresh" | "we\\"ird"'


@pytest.mark.parametrize("content, message", [
    ('{"text": "x", "output": {"a": 1}}\nnot json\n', ":2: not a JSON object"),
    ('{"text": "x", "answer": 1}\n', ':1: expected {"text": "...", "output": {...}}'),
])
def test_bad_extract_examples_are_one_line(tmp_path, content, message):
    path = tmp_path / "ex.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        load_tuning_examples(str(path), "extract")


def test_tuning_mistakes_end_before_any_model_loads(tmp_path):
    out = run_cli("prompt", "tune", "--task", "classify", "--examples", str(tmp_path / "none.csv"), "--name", "p")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "cannot read" in out.stderr
    out = run_cli("prompt", "tune", "--task", "classify", "--examples", "x.csv", "--name", "bad name")
    assert out.returncode == 2 and "not a usable model name" in out.stderr


@pytest.mark.slow
def test_classify_prompt_tunes_saves_and_is_used(default_model, tmp_path):
    from autoglm.engine.tasks.prompt_tune import TunedPrompt
    from benchmarks.datasets import rotten_tomatoes

    data = rotten_tomatoes(train=60, test=0, seed=5)
    examples = tmp_path / "reviews.csv"
    with examples.open("w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), *zip(data.train_texts, data.train_labels, strict=True)])
    out = run_cli("prompt", "tune", "--task", "classify", "--examples", str(examples), "--evaluate", "10",
                  "--name", "reviews-prompt", timeout=900)
    assert out.returncode == 0, out.stderr
    before, after = map(float, re.search(r"before ([\d.]+)% -> after ([\d.]+)%", out.stdout).groups())
    tuned = TunedPrompt.load("reviews-prompt")
    measured = tuned.report["candidates"]
    assert len(measured) >= 6 and after == max(c["accuracy"] for c in measured) and before == measured[0]["accuracy"]
    assert {c["shots"] for c in measured} == {0, 4} and tuned.labels == ["fresh", "rotten"]
    print(out.stdout)
    # the saved prompt is what was measured: the held-out texts give back the reported accuracy
    held = [(e["text"], e["answer"]) for e in tuned.report["held_out_examples"]]
    assert len(held) == 10 and not {t for t, _ in held} & {e["text"] for e in tuned.pool}
    texts = tmp_path / "held.txt"
    texts.write_text("\n".join(t for t, _ in held) + "\n")
    out = run_cli("classify", "--prompt", "reviews-prompt", "--file", str(texts), "--json", timeout=600)
    assert out.returncode == 0, out.stderr
    labels = [json.loads(line)["label"] for line in out.stdout.splitlines()]
    assert 100 * sum(a == y for a, (_, y) in zip(labels, held, strict=True)) / len(held) == pytest.approx(after)


@pytest.mark.slow
def test_extract_prompt_tunes_and_extract_uses_it_without_a_schema(default_model, tmp_path):
    from tests.test_extract import PERSON

    rows = [{"text": FORMS[i % len(FORMS)].format(n=n, a=a, c=c), "output": {"name": n, "age": a, "city": c}}
            for i, (n, a, c) in enumerate(PEOPLE)]
    examples, schema = tmp_path / "people.jsonl", tmp_path / "person.json"
    examples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    schema.write_text(json.dumps(PERSON))
    out = run_cli("prompt", "tune", "--task", "extract", "--examples", str(examples), "--schema", str(schema),
                  "--evaluate", "6", "--name", "people-prompt", timeout=900)
    assert out.returncode == 0, out.stderr
    assert "field accuracy % on 6 held-out examples" in out.stdout
    out = run_cli("extract", "--prompt", "people-prompt", "Nora Lind, 29, lives in Turku.")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"name": "Nora Lind", "age": 29, "city": "Turku"}
    out = run_cli("classify", "--prompt", "people-prompt", "x")
    assert out.returncode == 2 and "is a extract prompt, not a classify prompt" in out.stderr
