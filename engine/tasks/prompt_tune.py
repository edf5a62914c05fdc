"""Prompts that tune themselves: for zero-shot classification with the chat model and for extraction,
candidate instructions (written ones, and ones the model writes from the examples) crossed with
few-shot choices (none, or the examples nearest each text by embedding) are measured on a held-out
part of the user's labeled examples; the best by accuracy is kept and saved as a versioned model
(format ``prompt``) that ``classify --prompt`` and ``extract --prompt`` use.

Answers are grammar-constrained (a label from the set; an object of the schema), so accuracy
measures the choice of words, not whether the model kept to the format.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoglm.engine.backends.onnx.encoder import Encoder
from autoglm.engine.errors import InvalidArgumentError, InvalidModelError
from autoglm.engine.models import store
from autoglm.engine.models.store import FileEntry, Manifest, Staging, sha256_file
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.tasks.chat import PromptBuilder
from autoglm.engine.tasks.classify import load_examples
from autoglm.engine.tasks.extract import INSTRUCTION as EXTRACT_INSTRUCTION
from autoglm.engine.tasks.extract import Extractor, check_schema

PROMPT_FILE = "prompt.json"
SHOTS = (0, 4)  # few-shot choices tried: none, or the 4 nearest examples
MIN_EXAMPLES = 8

CLASSIFY_INSTRUCTIONS = (
    "Classify the user's text. Answer with exactly one of these labels: {labels}.",
    "You are a careful annotator. Read the text and reply with the single label that fits it best, "
    "chosen from: {labels}.",
    "Which of these categories describes the text: {labels}? Reply with the category name only.",
)
EXTRACT_INSTRUCTIONS = (
    EXTRACT_INSTRUCTION,
    "Read the user's text and fill in the JSON object the schema describes, using the text's own words.",
)
META = ("Here are examples of texts and the answers wanted for them:\n\n{examples}\n\nWrite one short instruction "
        "that tells an assistant how to produce such an answer for a new text. Reply with the instruction only.")


@dataclass
class Candidate:
    instruction: str
    shots: int
    origin: str  # "default", "written" or "generated"
    accuracy: float = -1.0
    seconds: float = 0.0


@dataclass
class TunedPrompt:
    task: str  # "classify" or "extract"
    instruction: str
    shots: int
    labels: list[str] = field(default_factory=list)  # classify
    schema: dict[str, Any] | None = None  # extract
    pool: list[dict[str, Any]] = field(default_factory=list)  # few-shot examples: {"text", "answer"}
    encoder: str | None = None  # picks the nearest shots
    report: dict[str, Any] = field(default_factory=dict)

    def install(self, name: str) -> Manifest:
        store.check_name(name)
        with Staging() as stage:
            path = stage.dir / PROMPT_FILE
            path.write_text(json.dumps(asdict(self), ensure_ascii=False, indent=1), encoding="utf-8")
            entry = FileEntry(PROMPT_FILE, sha256_file(path), path.stat().st_size)
            return stage.commit(Manifest(name=name, version=entry.sha256[:12], source=f"tuned:{self.task}",
                                         format="prompt", files=[entry], primary=PROMPT_FILE, quant="-",
                                         architecture=f"{self.task} prompt", size=entry.size))

    @classmethod
    def load(cls, name: str) -> TunedPrompt:
        manifest = store.require(name)
        if manifest.format != "prompt":
            raise InvalidModelError(f"{name} is in {manifest.format} format, not a tuned prompt "
                                    "(`autoglm prompt tune` makes one)")
        store.check_intact(manifest)
        return cls(**json.loads(manifest.primary_path.read_text(encoding="utf-8")))


def is_prompt(name: str) -> bool:
    """Whether the installed model ``name`` is a tuned prompt (a classify route may name one)."""
    manifest = store.get(name)
    return manifest is not None and manifest.format == "prompt"


def label_grammar(labels: list[str]) -> str:
    return "root ::= " + " | ".join(json.dumps(label) for label in labels)


class PromptRunner:
    """A tuned (or candidate) prompt over the loaded chat model: messages, constrained answers, shots."""

    def __init__(self, model: Any, prompt: TunedPrompt, embed: Callable[[list[str]], np.ndarray] | None,
                 prompts: PromptBuilder | None = None) -> None:
        self.model, self.prompt = model, prompt
        self.prompts = prompts or PromptBuilder(model)
        self.embed = embed
        self._pool_vectors: np.ndarray | None = None
        if prompt.task == "classify":
            self.grammar = label_grammar(prompt.labels)
        else:
            self.extractor = Extractor(model, check_schema(prompt.schema), prompts=self.prompts)

    def shots_for(self, texts: list[str], k: int) -> list[list[dict[str, Any]]]:
        """The ``k`` pool examples nearest each text (cosine similarity of their embeddings)."""
        if k == 0 or not self.prompt.pool or self.embed is None:
            return [[] for _ in texts]
        if self._pool_vectors is None:
            self._pool_vectors = self.embed([e["text"] for e in self.prompt.pool])
        sims = self.embed(texts) @ self._pool_vectors.T
        return [[self.prompt.pool[j] for j in np.argsort(-row)[:k][::-1]] for row in sims]

    def shots_one(self, text: str) -> list[tuple[str, Any]]:
        """The tuned number of nearest examples for one text, as (text, answer) pairs."""
        return [(s["text"], s["answer"]) for s in self.shots_for([text], self.prompt.shots)[0]]

    def system(self, instruction: str) -> str:
        return instruction.replace("{labels}", ", ".join(self.prompt.labels))

    def answer(self, text: str, instruction: str, shots: list[dict[str, Any]]) -> Any:
        if self.prompt.task == "extract":
            return self.extractor.extract(text, examples=[(s["text"], s["answer"]) for s in shots],
                                          instruction=instruction).data
        msgs = [{"role": "system", "content": self.system(instruction)}]
        for s in shots:
            msgs += [{"role": "user", "content": s["text"]}, {"role": "assistant", "content": s["answer"]}]
        msgs.append({"role": "user", "content": text})
        tokens = self.prompts.tokens(msgs)
        if len(tokens) >= self.model.n_ctx - 16:
            raise InvalidArgumentError(f"a prompt is {len(tokens)} tokens; the context holds {self.model.n_ctx}")
        params = SamplingParams(max_tokens=32, temperature=0.0)
        # exact: the accuracy tuning reports is what ``classify --prompt`` gives on the same texts, and a
        # text's label does not hang on what else the engine was running
        return "".join(self.model.generate(tokens, params, grammar=self.grammar, exact=True)).strip()

    def run(self, texts: list[str], instruction: str | None = None, shots: int | None = None,
            parallel: int = 4) -> list[Any]:
        instruction = instruction or self.prompt.instruction
        k = self.prompt.shots if shots is None else shots
        chosen = self.shots_for(texts, k)
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            return list(pool.map(lambda i: self.answer(texts[i], instruction, chosen[i]), range(len(texts))))


def score(task: str, got: Any, expected: Any) -> float:
    """Classify: 1 for the right label. Extract: the share of the expected fields given exactly."""
    if task == "classify":
        return float(got == expected)
    if not isinstance(got, dict) or not isinstance(expected, dict) or not expected:
        return 0.0
    return sum(got.get(k) == v for k, v in expected.items()) / len(expected)


def split_examples(examples: list[dict[str, Any]], evaluate: int, seed: int = 0) -> tuple[list, list]:
    """(pool for few-shot picks, held-out set to measure on), disjoint, stratified by answer for classify."""
    if len(examples) < MIN_EXAMPLES:
        raise InvalidArgumentError(f"{len(examples)} examples are too few to tune on; give at least {MIN_EXAMPLES}")
    rng = random.Random(seed)
    shuffled = examples[:]
    rng.shuffle(shuffled)
    held = min(evaluate, len(shuffled) // 2)
    by_answer: dict[str, list[dict[str, Any]]] = {}
    for e in shuffled:
        by_answer.setdefault(json.dumps(e["answer"], sort_keys=True) if isinstance(e["answer"], str) else "obj",
                             []).append(e)
    held_out: list[dict[str, Any]] = []
    while len(held_out) < held:  # round-robin over the answers: every label is measured
        for group in by_answer.values():
            if group and len(held_out) < held:
                held_out.append(group.pop())
    pool = [e for group in by_answer.values() for e in group]
    return pool, held_out


def generate_instruction(model: Any, prompts: PromptBuilder, pool: list[dict[str, Any]], seed: int) -> str | None:
    """An instruction the chat model writes from a few examples (APE-style); None when it writes nothing usable."""
    rng = random.Random(seed)
    sample = rng.sample(pool, min(4, len(pool)))
    shown = "\n\n".join(f"Text: {e['text'][:300]}\nAnswer: {json.dumps(e['answer'], ensure_ascii=False)}"
                        for e in sample)
    tokens = prompts.tokens([{"role": "user", "content": META.format(examples=shown)}])
    if len(tokens) >= model.n_ctx - 64:
        return None
    text = "".join(model.generate(tokens, SamplingParams(max_tokens=60, temperature=0.0))).strip()
    text = " ".join(text.split())
    return text if 12 <= len(text) <= 400 else None


def tune(model: Any, task: str, examples: list[dict[str, Any]], embed: Callable[[list[str]], np.ndarray] | None,
         encoder_name: str | None, schema: dict[str, Any] | None = None, evaluate: int = 30, parallel: int = 4,
         seed: int = 0, progress: Callable[[str, int, int], None] | None = None,
         cancel: threading.Event | None = None, model_name: str | None = None) -> TunedPrompt:
    """Measure every candidate on the held-out examples and keep the most accurate (ties: fewer shots,
    then the earlier candidate). ``examples``: ``{"text", "answer"}``, a label or an object."""
    if task not in ("classify", "extract"):
        raise InvalidArgumentError(f"prompt tuning takes --task classify or extract, not {task!r}")
    if task == "extract" and schema is None:
        raise InvalidArgumentError("extract prompts need --schema")
    pool, held_out = split_examples(examples, evaluate, seed)
    labels = sorted({e["answer"] for e in examples}) if task == "classify" else []
    if task == "classify" and len(labels) < 2:
        raise InvalidArgumentError("the examples need at least two labels")
    written = CLASSIFY_INSTRUCTIONS if task == "classify" else EXTRACT_INSTRUCTIONS
    base = TunedPrompt(task, written[0], 0, labels, schema, pool, encoder_name)
    runner = PromptRunner(model, base, embed)
    candidates = [Candidate(written[0], 0, "default")]
    candidates += [Candidate(written[0], k, "written") for k in SHOTS if k]
    candidates += [Candidate(text, k, "written") for text in written[1:] for k in SHOTS]
    generated = generate_instruction(model, runner.prompts, pool, seed)
    if generated:
        candidates += [Candidate(generated, k, "generated") for k in SHOTS]
    texts = [e["text"] for e in held_out]
    for n, cand in enumerate(candidates):
        if cancel is not None and cancel.is_set():
            break
        if progress:
            progress("candidates", n, len(candidates))
        started = time.perf_counter()
        answers = runner.run(texts, cand.instruction, cand.shots, parallel)
        cand.accuracy = round(100 * float(np.mean([score(task, a, e["answer"])
                                                   for a, e in zip(answers, held_out, strict=True)])), 1)
        cand.seconds = round(time.perf_counter() - started, 1)
    if progress:
        progress("candidates", len(candidates), len(candidates))
    measured = [c for c in candidates if c.accuracy >= 0]
    best = max(measured, key=lambda c: (c.accuracy, -c.shots))
    base.instruction, base.shots = best.instruction, best.shots
    base.report = {"held_out": len(held_out), "pool": len(pool), "before": candidates[0].accuracy,
                   "after": best.accuracy, "metric": "accuracy %" if task == "classify" else "field accuracy %",
                   "candidates": [asdict(c) for c in measured], "chat_model": model_name,
                   "held_out_examples": held_out}  # what the accuracies were measured on, to repeat it
    return base


def load_tuning_examples(path: str, task: str) -> list[dict[str, Any]]:
    """Classify: text,label rows (CSV or JSONL, as ``classify train`` reads). Extract: JSONL rows of
    ``{"text": ..., "output": {...}}``."""
    if task == "classify":
        texts, labels = load_examples(path)
        return [{"text": t, "answer": lab} for t, lab in zip(texts, labels, strict=True)]
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InvalidArgumentError(f"{path}:{n}: not a JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("output"), dict):
            raise InvalidArgumentError(f"{path}:{n}: expected {{\"text\": \"...\", \"output\": {{...}}}}")
        rows.append({"text": row["text"], "answer": row["output"]})
    return rows


def encoder_embed(encoder: Encoder) -> Callable[[list[str]], np.ndarray]:
    return lambda texts: encoder.embed(texts)[0]
