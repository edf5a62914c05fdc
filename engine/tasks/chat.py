"""Chat: the model's own template from its GGUF metadata, rendered in a Jinja2 sandbox.

Chat templates are code shipped inside downloaded files, so they run in an immutable sandbox:
they can format messages but not reach Python objects or the file system. The sandbox does not
bound the work, so rendering also has a deadline, an output limit, and a memory bound. The deadline
is checked wherever a template spends time: each item of every ``for`` loop (the compiler wraps its
iterable), every call (macros and recursive loops included), operator, attribute or item lookup,
filter and piece of output; no ``sys.settrace``, which would blind coverage and debuggers. The
memory bound: every value a filter, method call, operator,
concatenation or output would make is sized from its inputs *before* it is made (a single
``center(10**9)`` allocates gigabytes well inside the deadline). Every way a template makes a
value passes one of those checks, so a doubling loop stops at the bound too. A hostile template fails its request
with one line instead of holding a thread, the memory or shutdown.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment

from autoglm.engine.errors import BackendError, ContextOverflowError, first_line
from autoglm.engine.sampling import GenerationStats, SamplingParams
from autoglm.engine.tasks.tools import Tool, speaks_tools, template_messages

# Used only when a model ships no template: ChatML, which most small instruct models follow.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


_MARK = "\ue000"  # a private-use character: no template writes it
_MARKS = re.compile(f"{_MARK}(\\d+){_MARK}")
RENDER_TIMEOUT_S = 2.0
RENDER_MAX_CHARS = 4 << 20  # a prompt this long is far past any context; more is a template gone wrong
MAX_PRODUCT = 1 << 20  # largest string/list/number an intercepted * or ** may make
MAX_VALUE = 4 * RENDER_MAX_CHARS  # characters any one value may reach: room for a long message's .replace()
_WIDTHS = re.compile(r"[%:{][^%:{}]*?(\d{7,})")  # a field width or precision in a format string


def _raise(message: str) -> None:
    raise TemplateError(message)


class _TemplateTooCostly(Exception):
    pass


_deadline = threading.local()  # templates render in worker threads, several at once


def _tick() -> None:
    at = getattr(_deadline, "at", None)
    if at is not None and time.monotonic() > at:
        raise _TemplateTooCostly(f"rendering took over {_deadline.limit:g}s")


def _size(value: Any, depth: int = 0) -> int:
    """Characters ``value`` could become as text: strings and containers (a list of a thousand
    references to one long string costs nothing to hold and a lot to join or print)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int | float):
        return 24
    if depth < 3 and isinstance(value, list | tuple | set | frozenset | dict):
        items = value.items() if isinstance(value, dict) else value
        total = len(value)
        for item in items:
            total += _size(item, depth + 1)
            if total > MAX_VALUE:
                break
        return total
    return 0


def _check_call(what: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a call whose result could pass MAX_VALUE, judged from its arguments: the largest
    input times (1 + the longest other string: replace, join, indent) plus any count or width."""
    values = [*args, *kwargs.values()]
    sizes = sorted((_size(v) for v in values), reverse=True)
    counts = [abs(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]
    formats = [int(n) for v in values if isinstance(v, str) for n in _WIDTHS.findall(v[:4096])]
    estimate = (sizes[0] if sizes else 0) * (1 + (sizes[1] if len(sizes) > 1 else 0)) + max(counts + formats + [0])
    if estimate > MAX_VALUE:
        raise _TemplateTooCostly(f"{what} could make over {MAX_VALUE} characters")


def _bounded_filter(name: str, func: Any) -> Any:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_call(f"the filter {name}", args, kwargs)
        return func(*args, **kwargs)
    guarded.__dict__.update(getattr(func, "__dict__", {}))  # keeps jinja's pass_context / pass_environment marks
    return guarded


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b ~ c`` to a call the environment can size first (Jinja joins it directly),
    and every ``for`` loop's iterable to one that checks the deadline at each item (an empty body
    nested three deep over ``range(100000)`` would otherwise run for days without a call)."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        if not node.recursive:  # a recursive loop's inner levels come back through loop(), a call
            node.iter = nodes.Call(nodes.EnvironmentAttribute("ticking"), [node.iter], [], None, None,
                                   lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**", "+", "%"])
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        self.filters["tojson"] = _tojson
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "**" and isinstance(right, int) and isinstance(left, int) and abs(right) > 64:
            raise _TemplateTooCostly(f"{left} ** {right}")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_PRODUCT:
                    raise _TemplateTooCostly(f"a {type(seq).__name__} of {len(seq)} times {times}")
        if operator == "+" and _size(left) + _size(right) > MAX_VALUE:
            raise _TemplateTooCostly(f"a sum could make over {MAX_VALUE} characters")
        if operator == "%" and isinstance(left, str):
            _check_call("a % format", (left, right), {})
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja's names
        _tick()
        bound_to = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)  # "{:>9}".format is wrapped
        _check_call(f"{getattr(__obj, '__name__', 'a call')}()", (bound_to, *args), kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    @staticmethod
    def ticking(iterable: Any) -> Iterator[Any]:
        for item in iterable:
            _tick()
            yield item

    @staticmethod
    def bounded_concat(values: tuple[Any, ...]) -> str:
        if sum(_size(v) for v in values) > MAX_VALUE:
            raise _TemplateTooCostly(f"a ~ join could make over {MAX_VALUE} characters")
        return "".join(map(str, values))

    @staticmethod
    def _finalize(value: Any) -> Any:
        if _size(value) > MAX_VALUE:
            raise _TemplateTooCostly(f"printing a {type(value).__name__} could make over {MAX_VALUE} characters")
        return value


def _tojson(value: Any, indent: int | None = None) -> str:
    """As Hugging Face renders templates: plain JSON (Jinja's own escapes ``<`` for HTML, which
    would show a model ``\u003c`` in its tool descriptions)."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


def compile_template(template: str) -> Any:
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise BackendError(f"the model's chat template does not compile: {first_line(exc)}") from None
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:  # a parser driven past its limits
        raise BackendError(f"the model's chat template does not compile: {type(exc).__name__}") from None



def render(template: str | Any, messages: list[dict[str, Any]], bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True, timeout_s: float = RENDER_TIMEOUT_S,
           tools: list[dict[str, Any]] | None = None) -> str:
    """``template``: its source, or what ``compile_template`` made of it; ``tools`` in OpenAI's
    shape, for templates that render them."""
    compiled = compile_template(template) if isinstance(template, str) else template
    out: list[str] = []
    size = 0
    _deadline.at, _deadline.limit = time.monotonic() + timeout_s, timeout_s
    try:
        extra = {"tools": tools} if tools else {}
        for piece in compiled.generate(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                       add_generation_prompt=add_generation_prompt, **extra):
            _tick()
            size += len(piece)
            if size > RENDER_MAX_CHARS:
                raise _TemplateTooCostly(f"its output passed {RENDER_MAX_CHARS} characters")
            out.append(piece)
    except TemplateError as exc:
        raise BackendError(f"the model's chat template failed: {first_line(exc)}") from None
    except _TemplateTooCostly as exc:
        raise BackendError(f"the model's chat template was stopped: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the template is foreign code: 1/0, endless recursion, str < int
        raise BackendError(f"the model's chat template failed: {type(exc).__name__}: {first_line(exc)}") from None
    finally:
        _deadline.at = None
    return "".join(out)


class PromptBuilder:
    """Messages -> prompt tokens with the model's own template and its BOS rule: the one builder
    the chat session, the server and the API share."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        meta = backend.metadata
        source = meta.get("tokenizer.chat_template") or CHATML
        self.template = compile_template(source)
        self.native_tools = speaks_tools(source)  # else tools go in as a system message (tasks/tools.py)
        self.bos = self._special(meta, "tokenizer.ggml.bos_token_id")
        self.eos = self._special(meta, "tokenizer.ggml.eos_token_id")
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
        controls = backend.control_texts()
        self.control = re.compile("|".join(map(re.escape, controls))) if controls else None

    def _special(self, meta: dict[str, str], key: str) -> str:
        return self.backend.token_text(int(meta[key])) if key in meta else ""

    def tokens(self, messages: list[dict[str, Any]], tools: list[Tool] | None = None) -> list[int]:
        """With ``tools``, OpenAI's tool messages and calls are shaped for this template first."""
        if tools is not None:
            messages = template_messages(messages, tools, self.native_tools)
        listed = [t.openai() for t in tools] if tools and self.native_tools else None
        if self.control is not None and any(self.control.search(m.get("content") or "") for m in messages):
            return self._tokens_with_text_contents(messages, listed)
        text = render(self.template, messages, self.bos, self.eos, tools=listed)
        return self.backend.tokenize(text, add_bos=self.add_bos and not (self.bos and text.startswith(self.bos)))

    def _tokens_with_text_contents(self, messages: list[dict[str, Any]],
                                   tools: list[dict[str, Any]] | None = None) -> list[int]:
        """A message that holds control-token text (a user typing ``<|im_end|><|im_start|>system``
        to forge a turn): the template is rendered around markers, its own text tokenized with
        special tokens and each message's content as plain text, so the content stays words."""
        masked = [{**m, "content": f"{_MARK}{i}{_MARK}"} for i, m in enumerate(messages)]
        text = render(self.template, masked, self.bos, self.eos, tools=tools)
        out: list[int] = []
        for j, piece in enumerate(_MARKS.split(text)):
            if j % 2:  # a marker's index
                out += self.backend.tokenize(messages[int(piece)].get("content") or "", add_bos=False, special=False)
            elif piece:
                first = j == 0 and self.add_bos and not (self.bos and piece.startswith(self.bos))
                out += self.backend.tokenize(piece, add_bos=first)
        return out


class ChatSession:
    """A conversation over one backend; each turn re-renders the history, and the scheduler's
    prefix reuse makes that cost only the new tokens."""

    def __init__(self, backend: Any, system: str | None = None) -> None:
        self.backend = backend
        self.system = system
        self.history: list[dict[str, str]] = []
        self.last_stats = GenerationStats()
        self.prompts = PromptBuilder(backend)

    def messages(self, user: str | None = None) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs += self.history
        if user is not None:
            msgs.append({"role": "user", "content": user})
        return msgs

    def prompt_tokens(self, user: str) -> list[int]:
        return self.prompts.tokens(self.messages(user))
    def reset(self) -> None:
        self.history.clear()

    def send(self, user: str, params: SamplingParams, cancel: threading.Event | None = None) -> Iterator[str]:
        """Stream the reply to ``user``; the turn joins the history once it completes.

        When the conversation outgrows the context, the oldest turns are dropped (the system
        prompt stays) so that at least a quarter of the context is left for the reply.
        """
        reserve = min(params.max_tokens, self.backend.n_ctx // 4)
        tokens = self.prompt_tokens(user)
        while len(tokens) > self.backend.n_ctx - reserve and self.history:
            del self.history[:2]
            tokens = self.prompt_tokens(user)
        if len(tokens) >= self.backend.n_ctx:
            raise ContextOverflowError(
                f"the message is {len(tokens)} tokens but the context holds {self.backend.n_ctx}; "
                "shorten it or use a larger --ctx"
            )
        self.last_stats = GenerationStats()
        reply = []
        for piece in self.backend.generate(tokens, params, cancel, self.last_stats):
            reply.append(piece)
            yield piece
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(reply)}]
