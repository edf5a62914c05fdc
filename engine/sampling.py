"""Sampling settings, their limits and defaults: the one source the CLI, the server, the GUI's
engine and the scheduler all read, so a value accepted by one layer is never refused by another."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoglm.engine.errors import InvalidArgumentError

TEMPERATURE_MAX = 2.0  # OpenAI's own upper bound; beyond it small models emit noise
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40
DEFAULT_MAX_TOKENS = 512
MAX_STOP_STRINGS = 8  # OpenAI allows 4; a few more cost nothing, hundreds would cost every token


@dataclass
class SamplingParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # benchmarks: generate exactly max_tokens, like llama-bench

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise InvalidArgumentError(f"max tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= TEMPERATURE_MAX:
            raise InvalidArgumentError(f"temperature must be between 0 and {TEMPERATURE_MAX:g}, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidArgumentError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 1:
            raise InvalidArgumentError(f"top-k must be at least 1, got {self.top_k}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidArgumentError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(self.stop)}")


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prompt_evaluated: int = 0  # tokens of the prompt actually decoded (the rest came from the KV cache)
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str = ""  # "stop", "length", "cancelled" or "error"
    drafted: int = 0  # speculation: tokens drafted for this request, and how many the model accepted
    accepted: int = 0

    def summary(self) -> str:
        """The line `run` and `chat` print after a reply (stderr), with speculation's share if any."""
        rate = f"{self.decode_tps:.1f} tok/s, " if self.completion_tokens > 1 else ""  # (one token: no decode rate)
        line = (f"{self.completion_tokens} tokens, {rate}first token {self.prefill_s * 1000:.0f} ms, "
                f"{self.prompt_evaluated}/{self.prompt_tokens} prompt tokens evaluated")
        if self.drafted:
            line += f", {self.accepted}/{self.drafted} drafted tokens accepted"
        return f"[{line}]"

    @property
    def decode_tps(self) -> float:
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s > 0 and self.completion_tokens > 1 else 0.0


def stop_split(text: str, stops: list[str]) -> tuple[str, str | None]:
    """Text safe to emit now, and the stop string hit, if any (text then ends before it)."""
    found = [(i, s) for s in stops if s and (i := text.find(s)) >= 0]
    if found:
        cut, stop = min(found)
        return text[:cut], stop
    hold = 0  # keep back a tail that could still grow into a stop string
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold], None
