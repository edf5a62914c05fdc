"""A loaded model behind the scheduler, with the interface the chat task and the CLI use: the
one generation path (continuous batching, prefix reuse) every caller shares."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from autoglm.engine.sampling import GenerationStats, SamplingParams
from autoglm.engine.scheduler.batch import Scheduler


class ScheduledBackend:
    def __init__(self, backend: Any, scheduler: Scheduler, plan: Any = None) -> None:
        self.backend, self.scheduler, self.plan = backend, scheduler, plan
        self.metadata: dict[str, str] = backend.metadata

    @property
    def has_chat_template(self) -> bool:
        return self.backend.has_chat_template

    @property
    def n_ctx(self) -> int:
        return self.scheduler.ctx_per_seq

    def token_text(self, token_id: int) -> str:
        return self.backend.token_text(token_id)

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        return self.backend.tokenize(text, add_bos, special)

    def control_texts(self) -> list[str]:
        return self.backend.control_texts()

    def generate(self, tokens: list[int], params: SamplingParams, cancel: threading.Event | None = None,
                 stats: GenerationStats | None = None, grammar: str | None = None,
                 exact: bool = False) -> Iterator[str]:
        """Stream text for ``tokens``; ``stats`` is filled when the generator ends; ``exact``: see
        Scheduler.submit."""
        req = self.scheduler.submit(tokens, params, grammar, exact=exact)
        try:
            for event in req.stream():
                if event.error:
                    raise event.error
                if cancel is not None and cancel.is_set():
                    req.cancel()  # no more text once asked to stop; the loop drains to the final event
                elif event.text:
                    yield event.text
        finally:
            req.cancel()  # Ctrl-C or an abandoned generator stops the sequence
            if stats is not None:
                for key, value in vars(req.stats).items():
                    setattr(stats, key, value)

    def close(self) -> None:
        self.scheduler.close()
