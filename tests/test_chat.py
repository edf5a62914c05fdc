"""The llama.cpp backend and chat task on the real default model (SmolLM2-135M-Instruct Q4_1)."""

import threading

import pytest

from autoglm.engine.errors import ContextOverflowError, InvalidArgumentError
from autoglm.engine.sampling import GenerationStats, SamplingParams, stop_split
from autoglm.engine.tasks.chat import ChatSession, render

GREEDY = SamplingParams(temperature=0.0, max_tokens=48)


@pytest.mark.slow
def test_paris_at_temperature_zero(backend):
    reply = "".join(ChatSession(backend).send("What is the capital of France? Answer in one word.", GREEDY))
    assert "Paris" in reply


@pytest.mark.slow
def test_second_turn_evaluates_only_the_new_tokens(backend, monkeypatch):
    monkeypatch.setattr(backend.scheduler, "speculative", False)  # an accepted draft has a cell already
    chat = ChatSession(backend, system="You are a geography assistant, turn-test.")
    first = "".join(chat.send("What is the capital of France?", GREEDY))
    s1 = chat.last_stats
    assert first and s1.prompt_evaluated > s1.prompt_tokens // 2  # a new system prompt: mostly evaluated
    # the reply's last token has a KV cell only if a step evaluated it (to find the end of text); one
    # cut off by max_tokens was sampled, never evaluated
    cached = s1.prompt_tokens + s1.completion_tokens - (s1.finish_reason == "length")
    "".join(chat.send("And of Germany?", GREEDY))
    s2 = chat.last_stats
    assert s2.prompt_evaluated == s2.prompt_tokens - cached
    assert 0 < s2.prompt_evaluated < 25 < s2.prompt_tokens


@pytest.mark.slow
def test_long_conversations_drop_the_oldest_turns(default_model):
    from autoglm.engine import loader
    from autoglm.engine.planner import Overrides

    small = loader.load_scheduled(loader.prepare(None, Overrides(ctx=256)))
    chat = ChatSession(small, system="Be brief.")
    for i in range(8):
        "".join(chat.send(f"Tell me fact number {i} about the sea.", SamplingParams(temperature=0, max_tokens=40)))
    assert 0 < len(chat.history) < 16 and chat.history[-2]["content"].endswith("number 7 about the sea.")
    with pytest.raises(ContextOverflowError, match="message is"):
        list(chat.send("sea " * 400, GREEDY))
    small.close()


@pytest.mark.slow
def test_greedy_is_deterministic_and_seed_reproduces_sampling(backend):
    prompt = backend.tokenize("Once upon a time")
    a = "".join(backend.generate(prompt, SamplingParams(temperature=0.9, seed=7, max_tokens=20)))
    b = "".join(backend.generate(prompt, SamplingParams(temperature=0.9, seed=7, max_tokens=20)))
    assert a == b and a


@pytest.mark.slow
def test_max_tokens_stop_strings_and_cancel(backend):
    prompt = backend.tokenize("1, 2, 3, 4, 5, 6, 7, 8,")
    stats = GenerationStats()
    text = "".join(backend.generate(prompt, SamplingParams(temperature=0, max_tokens=5), stats=stats))
    assert stats.completion_tokens == 5 and stats.finish_reason == "length" and text
    stats = GenerationStats()
    text = "".join(backend.generate(prompt, SamplingParams(temperature=0, max_tokens=40, stop=[" 12"]), stats=stats))
    assert stats.finish_reason == "stop" and "12" not in text and "11" in text
    cancel, pieces, stats = threading.Event(), [], GenerationStats()
    for piece in backend.generate(prompt, SamplingParams(temperature=0, max_tokens=200), cancel, stats):
        pieces.append(piece)
        cancel.set()
    assert stats.finish_reason == "cancelled" and len(pieces) == 1


def test_stop_split_holds_back_a_partial_stop_string():
    assert stop_split("Hello <|en", ["<|end|>"]) == ("Hello ", None)
    assert stop_split("Hello <|end|> more", ["<|end|>"]) == ("Hello ", "<|end|>")
    assert stop_split("a STOP b <|end|>", ["<|end|>", "STOP"]) == ("a ", "STOP")  # the earliest one
    assert stop_split("plain", ["zzz"]) == ("plain", None)


def test_the_stats_line_gives_a_decode_rate_only_where_there_is_one():
    """A one-word answer (the README's first command) has no decode steps: no "0.0 tok/s"."""
    one = GenerationStats(prompt_tokens=41, prompt_evaluated=41, completion_tokens=1, prefill_s=0.5)
    assert one.summary() == "[1 tokens, first token 500 ms, 41/41 prompt tokens evaluated]"
    more = GenerationStats(prompt_tokens=41, prompt_evaluated=41, completion_tokens=11, prefill_s=0.5, decode_s=0.5)
    assert "11 tokens, 20.0 tok/s, first token 500 ms" in more.summary()


@pytest.mark.slow
def test_prompt_longer_than_context_is_a_clear_error(backend):
    tokens = backend.tokenize("word " * (backend.n_ctx + 10))
    with pytest.raises(ContextOverflowError, match="sequence holds"):
        list(backend.generate(tokens, GREEDY))


@pytest.mark.slow
def test_bad_sampling_values_are_rejected(backend):
    for bad in (SamplingParams(temperature=-1), SamplingParams(top_p=0), SamplingParams(max_tokens=0)):
        with pytest.raises(InvalidArgumentError):
            list(backend.generate([1, 2], bad))


def test_templates_run_sandboxed():
    from autoglm.engine.errors import BackendError

    assert render("{{ messages[0].content }}", [{"role": "user", "content": "hi"}]) == "hi"
    with pytest.raises(BackendError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])


@pytest.mark.slow
def test_cli_chat_runs_on_the_scheduler_and_reuses_the_prefix(default_model):
    """`autoglm chat` goes through the server's continuous-batching scheduler; turn two computes
    only what the KV cache does not already hold."""
    import re

    from tests.conftest import run_cli

    out = run_cli("chat", "--temperature", "0", "--max-tokens", "20", stdin="Hi, my name is Bob.\nWhat is my name?\n")
    assert out.returncode == 0, out.stderr
    turns = [tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) prompt tokens evaluated", out.stderr)]
    assert len(turns) == 2
    (first_eval, first_total), (second_eval, second_total) = turns
    assert first_eval == first_total and second_total > first_total
    assert second_eval < second_total - first_total + 10  # the first turn's tokens came from the cache


@pytest.mark.slow
def test_the_greedy_fast_path_picks_what_llama_cpps_greedy_sampler_picks(default_model):
    """Temperature 0 takes an argmax over the logits instead of a sampler chain (a quarter of the
    time per token); both must choose the same token at every step."""
    from autoglm.engine import loader
    from autoglm.engine.backends.llama_executor import GREEDY, LlamaExecutor
    from autoglm.engine.backends.llama_lib import llama_cpp
    from autoglm.engine.scheduler.step_planner import Row

    prepared = loader.prepare(None)
    model = loader.load_scheduled(prepared)
    executor = LlamaExecutor(model.backend.model, n_seq=1, ctx_per_seq=128, n_batch=64, threads=prepared.plan.threads)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    tokens = model.tokenize("The three primary colours are")
    executor.decode([Row(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])
    row = len(tokens) - 1
    for _ in range(24):
        fast, reference = executor.sample(GREEDY, row), executor.sample(chain, row)
        assert fast == reference
        executor.decode([Row(fast, len(tokens), 0, True)])
        tokens.append(fast)
        row = 0
    llama_cpp.llama_sampler_free(chain)
    executor.close()
    model.close()
