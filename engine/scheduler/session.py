"""The scheduler behind the interface ChatSession and the CLI use, so interactive chat runs
through the same continuous-batching loop (and prefix reuse) as the server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from engine.backends.llamacpp import GenerationStats, LlamaBackend, SamplingParams
from engine.errors import ContextOverflowError
from engine.scheduler.batch import Scheduler


class ScheduledBackend:
    def __init__(self, backend: LlamaBackend, scheduler: Scheduler) -> None:
        self.backend, self.scheduler = backend, scheduler
        self.metadata = backend.metadata
        self.plan = backend.plan

    @property
    def has_chat_template(self) -> bool:
        return self.backend.has_chat_template

    @property
    def n_ctx(self) -> int:
        return self.scheduler.ctx_per_seq

    def token_text(self, token_id: int) -> str:
        return self.backend.token_text(token_id)

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.backend.tokenize(text, add_bos)

    def reset(self) -> None:
        """Nothing to do: the next prompt reuses only the prefix it really shares."""

    def generate(self, tokens: list[int], params: SamplingParams, cancel: threading.Event | None = None,
                 stats: GenerationStats | None = None) -> Iterator[str]:
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}; "
                                       "use --ctx to enlarge it or shorten the prompt")
        req = self.scheduler.submit(tokens, params)
        try:
            for event in req.stream():
                if cancel is not None and cancel.is_set():
                    req.cancel()
                if event.text:
                    yield event.text
        finally:
            req.cancel()  # Ctrl-C or an abandoned generator stops the sequence
            if stats is not None:
                for key, value in vars(req.stats).items():
                    setattr(stats, key, value)

    def close(self) -> Any:
        self.scheduler.close()
