"""Extract: text -> one JSON object that validates against the user's JSON schema.

The schema becomes a GBNF grammar (llama.cpp's converter), so the model can only write JSON of the
schema's shape; what a grammar cannot express (``format``, ``pattern`` on some keys, numeric
bounds) is checked after with ``jsonschema``, and an object that fails is reported, never printed
as if it passed. Many texts go to the scheduler at once: continuous batching decodes them together.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from autoglm.engine.errors import AutoGLMError, InvalidArgumentError, QueueFullError
from autoglm.engine.fs import read_user_text
from autoglm.engine.sampling import GenerationStats, SamplingParams
from autoglm.engine.tasks.chat import PromptBuilder
from autoglm.engine.tasks.schema_grammar import MAX_SCHEMA_CHARS, schema_grammar

DEFAULT_MAX_TOKENS = 512

INSTRUCTION = ("Extract the information the JSON schema asks for from the user's text. Reply with one JSON "
               "object only. Copy names, numbers and dates exactly as the text writes them; do not invent "
               "values the text does not give.")


def check_schema(schema: Any, what: str = "the schema") -> dict[str, Any]:
    """A schema extract can use: an object schema that is itself valid JSON Schema."""
    if not isinstance(schema, dict):
        raise InvalidArgumentError(f"{what} must be a JSON object (a JSON schema), not {type(schema).__name__}")
    if schema.get("type", "object") != "object":
        raise InvalidArgumentError(f"{what} must describe an object (\"type\": \"object\"), "
                                   f"not {schema.get('type')!r}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "top level"
        raise InvalidArgumentError(f"{what} is not a valid JSON schema ({where}): {exc.message}") from None
    except RecursionError:  # the metaschema check recurses per level: a few hundred levels are too many
        raise InvalidArgumentError(f"{what} is nested too deeply") from None
    return schema


def load_schema(path: str | Path) -> dict[str, Any]:
    text = read_user_text(path, MAX_SCHEMA_CHARS * 4, "JSON schema file")
    if len(text) > MAX_SCHEMA_CHARS:
        raise InvalidArgumentError(f"{path} is {len(text)} characters; a schema of at most {MAX_SCHEMA_CHARS} is taken")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{path} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidArgumentError(f"{path} is nested too deeply") from None
    return check_schema(schema, str(path))


@dataclass
class Extraction:
    text: str
    data: dict[str, Any] | None  # None when it failed; then error says why
    error: str | None = None
    stats: GenerationStats | None = None


class Extractor:
    """One schema over one loaded chat model: the grammar is converted once, each text is a request."""

    def __init__(self, model: Any, schema: dict[str, Any], instruction: str | None = None,
                 examples: list[tuple[str, dict[str, Any]]] | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                 prompts: PromptBuilder | None = None) -> None:
        self.model = model
        self.schema = check_schema(schema)
        self.grammar = schema_grammar(self.schema)
        self.validator = jsonschema.validators.validator_for(self.schema)(self.schema)
        self.prompts = prompts or PromptBuilder(model)
        self.instruction = instruction or INSTRUCTION
        self.examples = examples or []
        self.max_tokens = max_tokens
        # few-shot examples picked per text (a tuned prompt's nearest examples); else ``examples``
        self.shots: Callable[[str], list[tuple[str, dict[str, Any]]]] | None = None

    def messages(self, text: str, examples: list[tuple[str, dict[str, Any]]] | None = None,
                 instruction: str | None = None) -> list[dict[str, str]]:
        schema = json.dumps(self.schema, ensure_ascii=False)
        msgs = [{"role": "system", "content": f"{instruction or self.instruction}\n\nJSON schema:\n{schema}"}]
        for example_text, answer in self.examples if examples is None else examples:
            msgs += [{"role": "user", "content": example_text},
                     {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)}]
        return msgs + [{"role": "user", "content": text}]

    def extract(self, text: str, cancel: threading.Event | None = None,
                examples: list[tuple[str, dict[str, Any]]] | None = None, instruction: str | None = None) -> Extraction:
        """Never raises for one text's failure (too long, JSON cut off, a value the schema refuses):
        a batch of a thousand texts goes on, and each failure says why. ``examples`` and
        ``instruction`` replace the extractor's own for this text (few-shot picks per text)."""
        if not text.strip():  # a blank line of a file: its null keeps the output lined up with the input
            return Extraction(text, None, "a blank text: nothing to extract from")
        try:
            if examples is None and self.shots is not None:
                examples = self.shots(text)
            tokens = self.prompts.tokens(self.messages(text, examples, instruction))
            room = self.model.n_ctx - len(tokens)
            if room < 8:
                return Extraction(text, None, f"the text is {len(tokens)} tokens with the prompt; a sequence "
                                              f"holds {self.model.n_ctx} (use a larger --ctx)")
            params = SamplingParams(max_tokens=min(self.max_tokens, room), temperature=0.0)
            stats = GenerationStats()
            answer = "".join(self.model.generate(tokens, params, cancel, stats, grammar=self.grammar))
        except QueueFullError:
            raise  # the whole request waits or is refused (a 429), not this text alone
        except AutoGLMError as exc:  # this text failed (a bad template, a grammar too dear, bad scores)
            return Extraction(text, None, str(exc))
        return self._check(text, answer, stats)

    def _check(self, text: str, answer: str, stats: GenerationStats) -> Extraction:
        if stats.finish_reason == "cancelled":
            return Extraction(text, None, "cancelled", stats)
        try:
            data = json.loads(answer)
        except json.JSONDecodeError:
            why = (f"the answer passed {stats.completion_tokens} tokens before its JSON closed (raise max tokens, "
                   "or bound the schema's strings with maxLength)" if stats.finish_reason == "length"
                   else "the answer is not JSON")
            return Extraction(text, None, why, stats)
        try:
            error = next(iter(self.validator.iter_errors(data)), None)
        except RecursionError:
            return Extraction(text, None, "the answer is nested too deeply to check against the schema", stats)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "top level"
            return Extraction(text, None, f"the answer does not match the schema at {where}: {error.message}", stats)
        return Extraction(text, data, None, stats)

    def extract_many(self, texts: Iterable[str], parallel: int = 4,
                     cancel: threading.Event | None = None) -> Iterator[Extraction]:
        """Results in input order; up to ``parallel`` texts are in the scheduler at a time (it batches
        them into shared decode steps), and only a bounded window of texts is read ahead."""
        window = max(1, parallel) * 2
        stop = cancel if cancel is not None else threading.Event()
        pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="extract")
        pending: list[Future[Extraction]] = []
        finished = False
        try:
            for text in texts:
                pending.append(pool.submit(self.extract, text, stop))
                while len(pending) >= window:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
            finished = True
        finally:
            if not finished:  # the caller stopped reading (Ctrl-C, a closed window): stop the rest
                stop.set()
                for future in pending:
                    future.cancel()
            pool.shutdown(wait=True)
