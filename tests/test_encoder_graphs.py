"""The encoder's graphs on a tiny random BERT (fast tier): the fused graph that embedding runs and
the per-layer graphs that early exit runs give the same vectors, both match a numpy forward pass,
and a conversion made before the fused graph existed still embeds (through its stages)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.bert_reference import forward

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat", "rug", "ran",
         "fast", "slow", "and", "ship", "sea", "storm", "light", "house", "keeper", "night", "."]


def _tiny_bert(folder: Path, act: str) -> tuple[dict[str, np.ndarray], dict]:
    """Random weights in a Hugging Face folder: config, safetensors and a WordPiece tokenizer.json."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    hidden, layers, inter, positions = 32, 2, 64, 64
    config = {"model_type": "bert", "hidden_size": hidden, "num_attention_heads": 4, "num_hidden_layers": layers,
              "intermediate_size": inter, "layer_norm_eps": 1e-12, "max_position_embeddings": positions,
              "hidden_act": act, "vocab_size": len(VOCAB)}
    rng = np.random.default_rng(0)

    def r(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    w = {"embeddings.word_embeddings.weight": r(len(VOCAB), hidden),
         "embeddings.position_embeddings.weight": r(positions, hidden),
         "embeddings.token_type_embeddings.weight": r(2, hidden),
         "embeddings.LayerNorm.weight": 1 + r(hidden), "embeddings.LayerNorm.bias": r(hidden)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (rows, cols) in {"attention.self.query": (hidden, hidden), "attention.self.key": (hidden, hidden),
                                   "attention.self.value": (hidden, hidden), "attention.output.dense": (hidden, hidden),
                                   "intermediate.dense": (inter, hidden), "output.dense": (hidden, inter)}.items():
            w[f"{p}{name}.weight"], w[f"{p}{name}.bias"] = r(rows, cols), r(rows)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}{name}.weight"], w[f"{p}{name}.bias"] = 1 + r(hidden), r(hidden)
    folder.mkdir()
    save_file({f"bert.{k}": v for k, v in w.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                             ("[SEP]", 3)])
    tok.save(str(folder / "tokenizer.json"))
    return w, config


TEXTS = ["The cat sat on the mat.", "A dog ran fast and the cat ran slow on the rug.", "Storm.",
         "The light house keeper and the ship at sea on a storm night."]


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_fused_and_staged_graphs_agree_with_a_numpy_forward(tmp_path, act):
    from autoglm.engine.backends.onnx.convert import FUSED_GRAPH, convert_folder
    from autoglm.engine.backends.onnx.encoder import Encoder

    weights, config = _tiny_bert(tmp_path / "hf", act)
    settings = convert_folder(tmp_path / "hf", tmp_path / "onnx")
    assert settings["fused"] == FUSED_GRAPH and (tmp_path / "onnx" / "int8" / FUSED_GRAPH).is_file()
    fp32 = Encoder(tmp_path / "onnx", "fp32", threads=1)
    fused = fp32.embed(TEXTS)[0]  # padded batch: the mask must keep padding out of attention and pooling
    staged = fp32.layer_features(TEXTS)[0][-1]
    assert np.abs(fused - staged).max() < 1e-5
    for text, vector in zip(TEXTS, fused, strict=True):
        ids = fp32.tokenize([text]).ids[0].tolist()
        last = forward(weights, config, ids)[-1].mean(0) if act == "gelu" else None
        if last is not None:  # the reference is BERT's GELU; ReLU is checked against the staged graphs
            assert np.abs(vector - last / np.linalg.norm(last)).max() < 1e-4
    int8 = Encoder(tmp_path / "onnx", "int8", threads=1).embed(TEXTS)[0]
    assert int8.shape == fused.shape and (int8 * fused).sum(1).min() > 0.9


def test_a_conversion_without_the_fused_graph_embeds_through_its_stages(tmp_path):
    from autoglm.engine.backends.onnx.convert import ENCODER_FILE, FUSED_GRAPH, convert_folder
    from autoglm.engine.backends.onnx.encoder import Encoder

    _tiny_bert(tmp_path / "hf", "gelu")
    convert_folder(tmp_path / "hf", tmp_path / "onnx")
    expected = Encoder(tmp_path / "onnx", "fp32", threads=1).embed(TEXTS)[0]
    settings = json.loads((tmp_path / "onnx" / ENCODER_FILE).read_text())
    del settings["fused"]  # as conversions before it wrote them
    (tmp_path / "onnx" / ENCODER_FILE).write_text(json.dumps(settings))
    (tmp_path / "onnx" / "fp32" / FUSED_GRAPH).unlink()
    old = Encoder(tmp_path / "onnx", "fp32", threads=1)
    assert old.fused_session is None and np.abs(old.embed(TEXTS)[0] - expected).max() < 1e-5


def test_the_stages_load_once_when_threads_ask_for_them_together(tmp_path, monkeypatch):
    """A server classifies on several worker threads; the first requests must not each load the
    per-layer graphs (seven sessions apiece)."""
    from concurrent.futures import ThreadPoolExecutor

    from autoglm.engine.backends.onnx.convert import convert_folder
    from autoglm.engine.backends.onnx.encoder import Encoder

    _tiny_bert(tmp_path / "hf", "gelu")
    convert_folder(tmp_path / "hf", tmp_path / "onnx")
    encoder = Encoder(tmp_path / "onnx", "fp32", threads=1)
    loaded: list[str] = []
    real = encoder._load

    def counted(name: str):  # noqa: ANN202
        loaded.append(name)
        time.sleep(0.05)  # widen the window a second thread would slip through
        return real(name)

    monkeypatch.setattr(encoder, "_load", counted)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: encoder.layer_features(TEXTS)[0][-1], range(4)))
    assert sorted(loaded) == ["embed", "layer_00", "layer_01"]
    assert all(np.array_equal(r, results[0]) for r in results)
