"""A JSON schema as a GBNF grammar for llama.cpp, with the work it can cause bounded: the schemas
come from requests (``response_format``, extract's schema, a tool's parameters), and both the
conversion and the grammar llama.cpp then runs for every sampled token grow with their counts."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from autoglm.engine.backends.llama_lib import llama_cpp
from autoglm.engine.errors import InvalidArgumentError

MAX_SCHEMA_CHARS = 32 << 10  # OpenAI takes about as much (500 enum values, 15,000 enum characters)
MAX_GRAMMAR_CHARS = 64 << 10  # the converter spells repetitions out (minItems: 100000 is 1.8 MB of grammar)
# ... in Python, before any size can be checked: minLength 1e9 took 56 s and 5.5 GB. So every count is
# bounded before the conversion; a larger one could not be generated within any max_tokens anyway.
MAX_REPEAT = 4096
COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
          "maxContains")
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_QUANTIFIER = re.compile(r"\{(\d{1,30})(?:,(\d{0,30}))?\}")
MAX_BOUND = 1e15  # integers the converter can spell as digit ranges; beyond, floats lose integer precision

def schema_grammar(schema: dict[str, Any] | str, what: str = "the schema") -> str:
    """A JSON schema as a GBNF grammar, its size bounded before and after the conversion: llama.cpp
    runs the grammar for every sampled token, so its size is work."""
    try:
        text = schema if isinstance(schema, str) else json.dumps(schema)
        if len(text) > MAX_SCHEMA_CHARS:
            raise InvalidArgumentError(f"{what} is {len(text)} characters; at most {MAX_SCHEMA_CHARS} are taken")
        check_counts(json.loads(text) if isinstance(schema, str) else schema, what)
        grammar = llama_cpp.llama_grammar.json_schema_to_gbnf(text)
    except InvalidArgumentError:
        raise
    except RecursionError:
        raise InvalidArgumentError(f"{what} is nested too deeply") from None
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot express
        raise InvalidArgumentError(f"{what} is not supported: {exc}") from None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise InvalidArgumentError(f"{what} asks for too much structure (a grammar of {len(grammar)} characters; "
                                   f"at most {MAX_GRAMMAR_CHARS}): lower its minItems, minLength or repetition counts")
    return grammar


def check_counts(schema: Any, what: str = "the schema") -> None:
    """Every repetition count and numeric bound in the schema, checked before the grammar is built:
    the converter's work (and the grammar llama.cpp then runs per token) grows with them."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in COUNTS and isinstance(value, int | float) and not isinstance(value, bool):
                if not 0 <= value <= MAX_REPEAT:
                    raise InvalidArgumentError(f"{what}: {key} {value:g} is out of range (0 to {MAX_REPEAT})")
            elif key in BOUNDS and isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(value) or abs(value) > MAX_BOUND or (key == "multipleOf" and value <= 0):
                    raise InvalidArgumentError(f"{what}: {key} {value!r} is out of range (at most {MAX_BOUND:g} "
                                               "either way)")
            elif key == "pattern" and isinstance(value, str):
                for low, high in _QUANTIFIER.findall(value):  # the converter spells a{n,m} out too
                    if max(int(low), int(high or 0)) > MAX_REPEAT:
                        raise InvalidArgumentError(f"{what}: a pattern that repeats {max(int(low), int(high or 0))} "
                                                   f"times (at most {MAX_REPEAT})")
            elif isinstance(value, dict | list):
                stack.append(value)
