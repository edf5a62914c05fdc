"""The Python API on the real models: ``from autoglm import Engine``, the engine users embed."""

from __future__ import annotations

import threading

import jsonschema
import numpy as np
import pytest

from tests.test_extract import PERSON

pytestmark = pytest.mark.slow  # real models or processes (the full tier)

QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def engine(default_model):
    from autoglm import Engine

    with Engine(parallel=4) as engine:
        yield engine


def test_chat_stream_and_history(engine):
    result = engine.chat(QUESTION, temperature=0, max_tokens=16)
    assert "Paris" in result.text and result.completion_tokens > 0 and result.finish_reason == "stop"
    pieces = list(engine.stream([{"role": "user", "content": QUESTION}], temperature=0, max_tokens=16))
    assert len(pieces) > 1 and "".join(pieces) == result.text  # the same scheduler, the same greedy text
    short = engine.chat("Count from one to fifty in words.", max_tokens=5, temperature=0)
    assert short.finish_reason == "length" and short.completion_tokens == 5


def test_threads_share_the_scheduler(engine):
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(engine.chat(QUESTION, temperature=0, max_tokens=16).text))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(out) == 6 and len(set(out)) == 1  # batched or not, temperature 0 gives one text on a CPU


def test_extract_one_and_many(engine):
    assert engine.extract("Ann Smith, 34, lives in Oslo and works as a nurse.", PERSON) == {
        "name": "Ann Smith", "age": 34, "city": "Oslo"}
    results = engine.extract(["Bo Lee, 51, from Lyon.", "Mia Cruz is 28 and lives in Quito."], PERSON)
    assert [r.text for r in results] == ["Bo Lee, 51, from Lyon.", "Mia Cruz is 28 and lives in Quito."]
    for r in results:
        assert r.error is None
        jsonschema.validate(r.data, PERSON)


def test_bad_input_raises_the_engine_error_with_one_line(engine):
    from autoglm import AutoGLMError

    for call in (lambda: engine.extract("x", {"type": "array"}), lambda: engine.chat("hi", temperature=9),
                 lambda: engine.classify("x"), lambda: engine.classify("x", labels=["only-one"]),
                 lambda: engine.embed([1, 2]), lambda: engine.classify([None], labels=["a", "b"]),
                 lambda: engine.chat(42)):
        with pytest.raises(AutoGLMError) as err:
            call()
        assert "\n" not in str(err.value)


def test_lone_surrogates_are_text_not_a_type_error(engine):
    """``embed(["\\ud800"])`` raised a raw TypeError from the tokenizer; the server replaced them already."""
    assert engine.embed(["\ud800 a cat"]).shape[0] == 1
    assert engine.classify("\ud800 goal!", labels=["sport", "politics"]).label in ("sport", "politics")
    assert isinstance(engine.chat("\ud800 hi", max_tokens=4, temperature=0).text, str)


def test_embed_and_zero_shot_classify(engine):
    vectors = engine.embed(["a cat sat on the mat", "a kitten sat on the rug", "stock markets fell"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    one = engine.classify("The striker scored twice in the final", labels=["sport", "finance"])
    assert one.label == "sport"
    many = engine.classify(["Shares fell on Wall Street", "The striker scored"], labels=["sport", "finance"])
    assert [p.label for p in many] == ["finance", "sport"]


def test_train_classify_and_close(default_model):
    """An engine used only for encoders never loads the chat model; closing frees what it loaded."""
    from autoglm import Engine
    from benchmarks.datasets import rotten_tomatoes

    data = rotten_tomatoes(train=300, test=400)  # 100 test texts: +-5 points of sampling noise alone
    engine = Engine()
    version = engine.train_classifier(list(zip(data.train_texts, data.train_labels, strict=True)), "api-reviews")
    predictions = engine.classify(data.test_texts, model="api-reviews")
    accuracy = np.mean([p.label == y for p, y in zip(predictions, data.test_labels, strict=True)])
    assert accuracy > 0.65 and len(version) == 12
    assert not engine._runtime.loaded  # no llama.cpp context was made
    engine.chat(QUESTION, max_tokens=4)
    scheduler = engine._runtime.scheduler
    engine.close()
    assert not scheduler.thread.is_alive()
    engine.close()  # twice is fine
    with pytest.raises(Exception, match="closed"):
        engine.chat(QUESTION)


def test_a_tuned_prompt_classifies_through_the_api(engine, tmp_path):
    """A prompt tuned by `autoglm prompt tune` is a model like any other: classify(model=...) uses it."""
    from autoglm.engine.tasks.prompt_tune import TunedPrompt

    pool = [{"text": t, "answer": a} for t, a in [
        ("The goalkeeper saved a penalty in the cup match", "sport"), ("The team won the league title", "sport"),
        ("Bank profits rose as interest rates climbed", "finance"), ("The stock index fell two percent", "finance")]]
    TunedPrompt("classify", "Label the text as {labels}.", 2, ["sport", "finance"], pool=pool).install("api-prompt")
    got = engine.classify(["The striker scored twice in the final", "Shares fell on Wall Street"], model="api-prompt")
    assert [p.label for p in got] == ["sport", "finance"] and got[0].confidence is None
