"""The Python API: ``from autoglm import Engine``.

One ``Engine`` is what ``autoglm serve`` runs, in-process: the same loader (planner, kernel
self-test), the same continuous-batching scheduler, the same task router and caches. Models load on
first use (an engine used only to classify never loads llama.cpp); ``close()`` (or ``with``) frees
them. Thread-safe: calls from many threads share the scheduler's batches.

    with Engine() as engine:
        print(engine.chat("What is the capital of France?", temperature=0).text)
        engine.classify(["great film", "dull"], labels=["positive", "negative"])
        engine.extract("Ann, 34, lives in Oslo", {"type": "object", "properties": {...}})
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from autoglm.engine import loader
from autoglm.engine.docs import ask as answers
from autoglm.engine.docs.search import Hit, search_collection
from autoglm.engine.errors import AutoGLMError, ExtractionFailedError, InvalidArgumentError
from autoglm.engine.planner import Overrides
from autoglm.engine.router import route
from autoglm.engine.runtime import Runtime
from autoglm.engine.sampling import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    GenerationStats,
    SamplingParams,
)
from autoglm.engine.tasks import corrections
from autoglm.engine.tasks.classify import Prediction, load_examples
from autoglm.engine.tasks.extract import Extraction, check_schema, load_schema
from autoglm.engine.tasks.rerank import Ranked

__all__ = ["AutoGLMError", "ChatResult", "Engine", "Extraction", "Prediction"]

Messages = str | Sequence[dict[str, str]]


@dataclass
class ChatResult:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float


@dataclass
class Answer:
    """An answer from a document collection: its text, and the passages it was given as numbered
    sources (``citations``: "[1] path, page N")."""

    text: str
    citations: list[str]
    passages: list[Hit]


def _text(text: str) -> str:
    """Lone surrogates (``"\\ud800"``, from JSON or a broken decoder) are not text: replaced, as the server does."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _texts(texts: Any) -> list[str]:
    """A text or a list of texts, checked: anything else is one line, not a TypeError deep inside."""
    batch = [texts] if isinstance(texts, str) else texts
    if not isinstance(batch, list | tuple) or not all(isinstance(t, str) for t in batch):
        raise InvalidArgumentError("texts must be a string or a list of strings")
    return [_text(t) for t in batch]


class Engine:
    """Chat, classify, extract and embed on this machine. ``model``: the chat/extract model (a store
    name, ``pypi:``/``hf:`` source or a .gguf path; default: the router's, else SmolLM2)."""

    def __init__(self, model: str | None = None, *, threads: int | None = None, ctx: int | None = None,
                 gpu_layers: int | None = None, parallel: int | None = None, safe: bool = False) -> None:
        self._overrides = Overrides(threads=threads, ctx=ctx, gpu_layers=gpu_layers, safe=safe)
        self._overrides.validate()
        if parallel is not None and parallel < 1:
            raise InvalidArgumentError(f"parallel must be at least 1, got {parallel}")
        self._model_ref, self._parallel = model, parallel
        self._prepared: loader.Prepared | None = None
        self._guard = threading.Lock()
        self._runtime: Runtime | None = None
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------------
    def _rt(self) -> Runtime:
        with self._guard:
            if self._closed:
                raise InvalidArgumentError("this Engine is closed")
            if self._runtime is None:
                prepared = self._prepared = loader.prepare(route("chat", self._model_ref), self._overrides)
                name = prepared.model.manifest.name if prepared.model.manifest else Path(prepared.model.path).stem
                self._runtime = Runtime(name, self._load, prepared.device, plan=prepared.plan)
            return self._runtime

    def _load(self) -> Any:
        assert self._prepared is not None
        parallel = self._parallel or self._prepared.plan.slots
        return loader.load_scheduled(self._prepared, parallel=parallel,
                                     ctx_per_seq=min(self._prepared.plan.n_ctx, 4096))

    @property
    def plan(self) -> dict[str, Any]:
        """The planner's choices with their reasons (what ``autoglm doctor`` prints)."""
        self._rt()
        assert self._prepared is not None
        return loader.describe(self._prepared)

    def close(self) -> None:
        """Free the model, its context and the encoders; safe to call twice."""
        with self._guard:
            self._closed = True
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- chat -----------------------------------------------------------------------------------
    def _tokens(self, messages: Messages, system: str | None) -> list[int]:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InvalidArgumentError("messages: a text, or a list of {\"role\": ..., \"content\": ...} dicts")
        msgs = ([{"role": "system", "content": system}] if system else []) + [dict(m) for m in messages]
        for m in msgs:
            if isinstance(m.get("content"), str):
                m["content"] = _text(m["content"])
        return self._rt().prompts.tokens(msgs)

    def _params(self, prompt_len: int, max_tokens: int, temperature: float, top_p: float, seed: int | None,
                stop: list[str] | None) -> SamplingParams:
        params = self._rt().sampling(prompt_len, max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                     stop=stop or [])
        params.validate()
        return params

    def stream(self, messages: Messages, *, system: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
               temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, seed: int | None = None,
               stop: list[str] | None = None, stats: GenerationStats | None = None) -> Iterator[str]:
        """The reply, piece by piece; closing the iterator early stops the generation."""
        tokens = self._tokens(messages, system)
        params = self._params(len(tokens), max_tokens, temperature, top_p, seed, stop)
        yield from self._rt().model.generate(tokens, params, stats=stats)

    def chat(self, messages: Messages, *, system: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
             temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, seed: int | None = None,
             stop: list[str] | None = None) -> ChatResult:
        """``messages``: a user message, or OpenAI-style ``[{"role": ..., "content": ...}]``."""
        stats = GenerationStats()
        text = "".join(self.stream(messages, system=system, max_tokens=max_tokens, temperature=temperature,
                                   top_p=top_p, seed=seed, stop=stop, stats=stats))
        return ChatResult(text, "length" if stats.finish_reason == "length" else "stop", stats.prompt_tokens,
                          stats.completion_tokens, round(stats.decode_tps, 1))

    # --- extract --------------------------------------------------------------------------------
    @overload
    def extract(self, text: str, schema: dict[str, Any] | str | Path, *, max_tokens: int = ...) -> dict[str, Any]: ...

    @overload
    def extract(self, text: list[str], schema: dict[str, Any] | str | Path, *,
                max_tokens: int = ...) -> list[Extraction]: ...

    def extract(self, text: str | list[str], schema: dict[str, Any] | str | Path, *,
                max_tokens: int = 512) -> dict[str, Any] | list[Extraction]:
        """One text: the object (an ``AutoGLMError`` says why when none validates). A list: an
        ``Extraction`` per text, in order, decoded in parallel; failures carry ``error``.
        ``schema``: a JSON schema (dict) or the path of a schema file."""
        schema = check_schema(schema) if isinstance(schema, dict) else load_schema(schema)
        texts = _texts(text)
        runtime = self._rt()
        extractor = runtime.extractor(schema, max_tokens=max_tokens)
        if isinstance(text, str):
            result = extractor.extract(texts[0])
            if result.data is None:
                raise ExtractionFailedError(f"no object extracted: {result.error}")
            return result.data
        return list(extractor.extract_many(texts, parallel=runtime.scheduler.parallel))

    # --- encoders -------------------------------------------------------------------------------
    def embed(self, texts: str | list[str], *, model: str | None = None) -> np.ndarray:
        """Unit-length sentence embeddings, one row per text."""
        return self._rt().embed(_texts(texts), model).vectors

    def search_documents(self, query: str, collection: str, *, k: int = 5, rerank: str | None = None) -> list[Hit]:
        """The passages of a collection (``autoglm docs add``) that best match ``query``: keywords and
        meaning, fused; ``rerank``: an embedding model that re-scores the best 20."""
        rt = self._rt()
        return search_collection(collection, query, k, lambda name: rt.encoder(name)[1], rerank=rt.reranker(rerank))

    def ask(self, question: str, collection: str, *, k: int = 5, max_tokens: int = DEFAULT_MAX_TOKENS,
            temperature: float = 0.0, rerank: str | None = None) -> Answer:
        """An answer grounded in the collection's passages, citing them by number; when none is on
        topic, says the documents do not answer it (without asking the model)."""
        hits = answers.relevant(self.search_documents(question, collection, k=k, rerank=rerank))
        if not hits:
            return Answer(answers.NOT_FOUND, [], [])
        messages = answers.messages(question, hits)
        reply = self.chat(messages[1:], system=messages[0]["content"], max_tokens=max_tokens, temperature=temperature)
        return Answer(reply.text, answers.citations(hits), hits)

    def rerank(self, query: str, documents: list[str], *, model: str | None = None,
               top_n: int | None = None) -> list[Ranked]:
        """``documents`` most relevant to ``query`` first, each with its index and cosine score
        (the embed model scores them: ``autoglm.engine.tasks.rerank`` says why)."""
        return self._rt().rerank(query, list(documents), model, top_n).results

    @overload
    def classify(self, texts: str, *, model: str | None = None, labels: Sequence[str] | None = None,
                 exact: bool = False) -> Prediction: ...

    @overload
    def classify(self, texts: list[str], *, model: str | None = None, labels: Sequence[str] | None = None,
                 exact: bool = False) -> list[Prediction]: ...

    def classify(self, texts: str | list[str], *, model: str | None = None, labels: Sequence[str] | None = None,
                 exact: bool = False) -> Prediction | list[Prediction]:
        """``labels``: zero-shot over these names; else the classifier ``model`` (default: the router's).
        Each prediction has ``review`` set when its confidence is too low to trust unseen. A tuned
        prompt (``autoglm prompt tune``) as ``model`` labels with the chat model: no confidence then."""
        predictions = self._rt().classify(_texts(texts), model=model, labels=labels, exact=exact).predictions
        return predictions[0] if isinstance(texts, str) else predictions

    def train_classifier(self, examples: Sequence[tuple[str, str]] | str | Path, name: str, *,
                         budget: float = 1.0) -> str:
        """Train (text, label) examples, or a CSV/JSONL file of them, into the classifier ``name``
        (a new version when it exists); returns its version."""
        if isinstance(examples, str | Path):
            pairs = load_examples(examples)
        else:
            pairs = [t for t, _ in examples], [lab for _, lab in examples]
        return self._rt().train_classifier(name, pairs, budget=budget).manifest.version

    def correct(self, classifier: str, corrected: Sequence[tuple[str, str]]) -> str:
        """Labels a user fixed, as (text, right label): kept with the classifier's examples, which
        retrain it as a new version (``autoglm models rollback`` goes back); returns that version."""
        return corrections.correct(classifier, list(corrected), opener=self._rt().encoder).version
