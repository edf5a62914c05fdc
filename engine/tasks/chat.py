"""Chat: the model's own template from its GGUF metadata, rendered in a Jinja2 sandbox.

Chat templates are code shipped inside downloaded files, so they run in an immutable sandbox:
they can format messages but not reach Python objects or the file system.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import BackendError, ContextOverflowError
from engine.sampling import GenerationStats, SamplingParams

# Used only when a model ships no template: ChatML, which most small instruct models follow.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise(message: str) -> None:
    raise TemplateError(message)


def render(template: str, messages: list[dict[str, str]], bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template).render(
            messages=messages, bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except TemplateError as exc:
        raise BackendError(f"the model's chat template failed: {exc}") from None


class PromptBuilder:
    """Messages -> prompt tokens with the model's own template and its BOS rule: the one builder
    the chat session, the server and the API share."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        meta = backend.metadata
        self.template = meta.get("tokenizer.chat_template") or CHATML
        self.bos = self._special(meta, "tokenizer.ggml.bos_token_id")
        self.eos = self._special(meta, "tokenizer.ggml.eos_token_id")
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"

    def _special(self, meta: dict[str, str], key: str) -> str:
        return self.backend.token_text(int(meta[key])) if key in meta else ""

    def tokens(self, messages: list[dict[str, str]]) -> list[int]:
        text = render(self.template, messages, self.bos, self.eos)
        return self.backend.tokenize(text, add_bos=self.add_bos and not (self.bos and text.startswith(self.bos)))


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
