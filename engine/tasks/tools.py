"""Tool calling in OpenAI's shape over any chat model: the tools go to the model's own template
when it speaks them (Qwen2.5's ``<tools>`` and ``<tool_call>``), else into a system message in
the same tag format; calls are generated under a grammar built from each tool's JSON schema, so
their arguments always parse and validate.

A reply that may call (``tool_choice`` ``auto``) is generated in two phases: free text that
stops at ``<tool_call>``, then, if the model opened one, the calls under the grammar from that
point (the prompt's cells are reused, so the second phase costs only the calls). ``required`` or
a named function start in the second phase. The pieces here are pure: the server and the Python
API run the phases over their own generation loops.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import jsonschema

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.tasks.schema_grammar import MAX_SCHEMA_CHARS, schema_grammar

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_TOOLS = 128  # more is no agent's toolbox, and each one is prompt and grammar to carry
MAX_DESCRIPTION_CHARS = 4096
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.S)

GENERIC_INSTRUCTION = (
    "You can call functions to help answer. Each function's name, description and JSON schema of its "
    "arguments:\n{tools}\n\nTo call a function, reply with one block per call and nothing else:\n"
    f'{OPEN}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n{CLOSE}\n'
    "Results come back in messages that start with 'Function result'. When no function is needed, "
    "answer directly."
)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI's clients expect


def tools_from(specs: list[dict[str, Any]]) -> list[Tool]:
    """OpenAI-shaped tool definitions, checked: a clear error for each way one can be wrong."""
    if len(specs) > MAX_TOOLS:
        raise InvalidArgumentError(f"a request may offer at most {MAX_TOOLS} tools, got {len(specs)}")
    tools: list[Tool] = []
    for i, spec in enumerate(specs):
        fn = spec.get("function") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or spec.get("type", "function") != "function" or not isinstance(fn, dict):
            raise InvalidArgumentError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidArgumentError(f"tools[{i}].function.name must be 1-64 letters, digits, _ or -")
        if any(t.name == name for t in tools):
            raise InvalidArgumentError(f"tools[{i}]: the function name '{name}' is given twice")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict) or len(json.dumps(params)) > MAX_SCHEMA_CHARS:
            raise InvalidArgumentError(f"tools[{i}].function.parameters must be a JSON schema object of at most "
                                       f"{MAX_SCHEMA_CHARS} characters")
        description = fn.get("description") or ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
            raise InvalidArgumentError(f"tools[{i}].function.description must be text of at most "
                                       f"{MAX_DESCRIPTION_CHARS} characters")
        tools.append(Tool(name, description, params))
    return tools


def callable_tools(tools: list[Tool], choice: str | dict[str, Any] | None) -> tuple[list[Tool], bool]:
    """The tools the reply may call and whether it must call one (``required`` or a named one);
    none for ``none``."""
    if choice is None or choice == "auto":
        return tools, False
    if choice == "none":
        return [], False
    if choice == "required":
        if not tools:
            raise InvalidArgumentError("tool_choice is 'required' but no tools are given")
        return tools, True
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    named = [t for t in tools if t.name == name]
    if not named:
        raise InvalidArgumentError(f"tool_choice names the function '{str(name)[:64]}', which is not in tools")
    return named, True


def call_grammar(tools: list[Tool], parallel: bool) -> str:
    """GBNF for what follows an opened ``<tool_call>``: one call (or several, when parallel calls
    are allowed), each ``{"name": ..., "arguments": ...}`` with the arguments valid for its tool."""
    each: list[dict[str, Any]] = [
        {"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
         "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema = each[0] if len(each) == 1 else {"anyOf": each}
    body = re.sub(r"^root ::=", "call ::=", schema_grammar(schema, "the tools' parameters"), flags=re.M)
    more = f' ("\\n{CLOSE}\\n{OPEN}\\n" call)*' if parallel else ""
    return f'root ::= "\\n"? call{more} "\\n{CLOSE}"\n{body}'


def parse_calls(text: str, tools: list[Tool]) -> tuple[str, list[ToolCall]]:
    """The reply's text outside its ``<tool_call>`` blocks, and the calls in them. A block that does
    not parse or names no offered tool stays text: the client sees what the model wrote.

    Small models often answer a tool question with the call as bare JSON (in a code fence) instead
    of the tags their template taught: Qwen2.5-Coder-1.5B does. A reply that is nothing but such
    a call is taken as one, if its arguments validate against the tool's schema (they were not
    generated under the grammar, so they are checked here)."""
    by_name = {t.name: t for t in tools}
    calls: list[ToolCall] = []
    kept: list[str] = []
    last = 0
    for block in _BLOCK.finditer(text):
        call = _call(block.group(1), by_name, check=False)
        if call is None:
            continue
        kept.append(text[last:block.start()])
        last = block.end()
        calls.append(call)
    if not calls and (bare := _BARE.fullmatch(text.strip())) and (call := _call(bare.group(1), by_name, check=True)):
        return "", [call]
    tail = text[last:]
    if calls and OPEN in tail and CLOSE not in tail[tail.rindex(OPEN):]:  # a further call cut by max_tokens
        tail = tail[:tail.rindex(OPEN)]
    kept.append(tail)
    return "".join(kept).strip() if calls else text, calls


_BARE_STARTS = ("{", "```json", "```\n{")
_BARE = re.compile(r"(?:```(?:json)?\s*)?(\{.*\})(?:\s*```)?", re.S)


def _call(text: str, tools: dict[str, Tool], check: bool) -> ToolCall | None:
    try:
        data = json.loads(text)
    except ValueError:
        # Qwen2.5's own template shows the call format as {{"name": ...}} (its Jinja string keeps
        # both braces), and its models copy that now and then
        if not (text.startswith("{{") and text.endswith("}}")):
            return None
        try:
            data = json.loads(text[1:-1])
        except ValueError:
            return None
    if not isinstance(data, dict) or data.get("name") not in tools:
        return None
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    if check:
        try:
            jsonschema.validate(args, tools[data["name"]].parameters)
        except (jsonschema.ValidationError, jsonschema.SchemaError):
            return None
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", data["name"], json.dumps(args, ensure_ascii=False))


def speaks_tools(template_source: str) -> bool:
    """Whether the model's template renders a ``tools`` list itself (then it also knows its call format)."""
    return bool(re.search(r"\btools\b", template_source)) and OPEN in template_source


def template_messages(messages: list[dict[str, Any]], tools: list[Tool], native: bool) -> list[dict[str, Any]]:
    """OpenAI messages as the template needs them. A native template gets the calls' arguments as
    objects (it writes them with ``tojson``); any other gets plain turns: the tool list in the
    system message, earlier calls as their blocks, results as a user turn (templates that insist
    on alternating roles accept that)."""
    if native:
        return [_native(m) for m in messages]
    out: list[dict[str, Any]] = []
    if tools:
        listing = "\n".join(json.dumps(t.openai()["function"], ensure_ascii=False) for t in tools)
        instruction = GENERIC_INSTRUCTION.replace("{tools}", listing)
        if messages and messages[0].get("role") == "system":
            instruction = f"{messages[0].get('content') or ''}\n\n{instruction}".strip()
            messages = messages[1:]
        out.append({"role": "system", "content": instruction})
    for m in messages:
        if m.get("role") == "tool":
            result = f"Function result ({m.get('name') or m.get('tool_call_id') or 'call'}):\n{m.get('content') or ''}"
            if out and out[-1]["role"] == "user" and out[-1].get("results"):
                out[-1]["content"] += "\n\n" + result
            else:
                out.append({"role": "user", "content": result, "results": True})
        elif m.get("role") == "assistant" and m.get("tool_calls"):
            blocks = [f'{OPEN}\n{json.dumps(_call_dict(c), ensure_ascii=False)}\n{CLOSE}' for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(filter(None, [m.get("content") or "", *blocks]))})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return [{k: v for k, v in m.items() if k != "results"} for m in out]


def _call_dict(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            pass  # kept as written: the model sees what it (or the client) sent
    return {"name": fn.get("name", ""), "arguments": args}


def _native(m: dict[str, Any]) -> dict[str, Any]:
    if m.get("role") == "assistant" and m.get("tool_calls"):
        calls = [{"type": "function", "id": c.get("id"), "function": _call_dict(c)} for c in m["tool_calls"]]
        return {**m, "content": m.get("content") or "", "tool_calls": calls}
    return {**m, "content": m.get("content") or ""}


@dataclass(frozen=True)
class ToolUse:
    """One request's tool calling, set up once (in a worker thread: the grammar is work) for
    every front end: what the prompt lists, whether the reply may or must call, and the two
    phases' prompts and result."""

    listed: list[Tool]  # what the template is given (none for tool_choice "none")
    grammar: str | None  # for the calls; None: the reply may not call
    required: bool

    @classmethod
    def of(cls, specs: list[dict[str, Any]] | None, choice: str | dict[str, Any] | None,
           parallel: bool = True) -> ToolUse | None:
        """None when the request offers no tools: the plain chat path."""
        if not specs:
            if choice not in (None, "none", "auto"):
                raise InvalidArgumentError("tool_choice needs tools")
            return None
        tools = tools_from(specs)
        may, required = callable_tools(tools, choice)
        return cls([] if choice == "none" else tools, call_grammar(may, parallel) if may else None, required)

    def stops(self) -> list[str]:
        """Where the free phase ends: the model opening a call."""
        return [OPEN] if self.grammar is not None and not self.required else []

    def opening(self, said: str, tokenize: Any) -> list[int]:
        """Tokens to append to the prompt for the calls' phase: the model's own text so far (as
        text, never control tokens) and the opened call."""
        return (tokenize(said, False, False) if said else []) + tokenize(OPEN + "\n", False, True)

    def result(self, said: str, calls_text: str | None) -> tuple[str, list[ToolCall]]:
        """The reply's content and calls; ``calls_text`` None when the model never opened a call
        (its reply may still be a bare call, see ``parse_calls``)."""
        return parse_calls(said if calls_text is None else f"{said}{OPEN}\n{calls_text}", self.listed)

    @staticmethod
    def holds(said: str) -> bool:
        """Whether a streamed reply so far could still be a bare call: held back, not sent as text."""
        start = said[:256].lstrip()[:8]  # the head only: a held reply grows at every token
        return any(start.startswith(p) or p.startswith(start) for p in _BARE_STARTS)
