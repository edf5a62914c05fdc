"""Special token ids and metadata types of the real SmolLM2 GGUF, rewritten a few hundred ways and
each opened the way `autoglm run --model FILE` opens it: the header walk, the facts, then llama.cpp
in a crash-isolated child. A BOS or EOS id past the vocabulary used to abort the process that loaded
it (C++ vector::_M_range_check, SIGABRT), the server included. Here: every variant is refused with
one line or loads; the test process (the parent) never dies and never sees a traceback."""

from __future__ import annotations

import time

import pytest

from autoglm.engine.errors import AutoGLMError
from tests.gguf_edit import ARR, BOOL, F32, I32, STR, U32, U64, Template

pytestmark = pytest.mark.slow  # real models or processes (the full tier)

SPECIAL = ("bos", "eos", "unknown", "padding", "eot", "seperator", "cls", "mask")
SHAPE = ("llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
         "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
         "llama.attention.layer_norm_rms_epsilon", "general.alignment", "general.file_type",
         "tokenizer.chat_template", "general.architecture", "general.name", "tokenizer.ggml.add_bos_token",
         "tokenizer.ggml.model", "tokenizer.ggml.pre")


def variants(n_vocab: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in SPECIAL:
        key = f"tokenizer.ggml.{name}_token_id"
        for label, value in (("=n_vocab", (U32, n_vocab)), ("=n_vocab+7", (U32, n_vocab + 7)),
                             ("=2^31-1", (U32, (1 << 31) - 1)), ("=2^32-1", (U32, (1 << 32) - 1)),
                             ("=-1", (I32, -1)), ("=2^40", (U64, 1 << 40)), ("-string", (STR, "1")),
                             ("-float", (F32, 1.5)), ("-bool", (BOOL, True)), ("-array", (ARR, (U32, [1, 2]))),
                             ("=0", (U32, 0)), ("=last", (U32, n_vocab - 1))):
            out[f"{name}{label}"] = {key: value}
    for key in ("tokens", "token_type", "scores", "merges", "model"):
        out[f"no-{key}"] = {f"tokenizer.ggml.{key}": None}
    out["tokens-string"] = {"tokenizer.ggml.tokens": (STR, "a b c")}
    out["tokens-empty"] = {"tokenizer.ggml.tokens": (ARR, (STR, []))}
    out["token_type-short"] = {"tokenizer.ggml.token_type": (ARR, (I32, [1] * 10))}
    out["scores-short"] = {"tokenizer.ggml.scores": (ARR, (F32, [0.0] * 10))}
    out["merges-numbers"] = {"tokenizer.ggml.merges": (ARR, (U32, [1, 2, 3]))}
    for key in SHAPE:
        for label, value in (("string", (STR, "7")), ("float", (F32, 2.5)), ("negative", (I32, -1)),
                             ("array", (ARR, (U32, [1, 2]))), ("zero", (U32, 0)), ("huge", (U64, 1 << 40))):
            out[f"{key}-{label}"] = {key: value}
    return out


def test_a_few_hundred_metadata_lies_never_take_the_parent_down(default_model, tmp_path):
    from autoglm.engine import loader

    template = Template(default_model.primary_path)
    cases = variants(template.n_vocab)
    assert len(cases) >= 200
    outcomes = {"refused": 0, "loaded": 0}
    started = time.monotonic()
    for name, changes in cases.items():
        path = template.write(tmp_path / "variant.gguf", changes)
        try:
            loader.prepare(str(path))
            outcomes["loaded"] += 1
        except AutoGLMError as exc:
            assert "\n" not in str(exc) and str(exc), name
            outcomes["refused"] += 1
        path.unlink()
    print(f"{len(cases)} variants in {time.monotonic() - started:.0f} s: {outcomes}")
    assert outcomes["refused"] >= 150 and outcomes["loaded"] >= 2  # bos=0, eos=last ... still load


@pytest.mark.parametrize("command", ["run", "serve"])
def test_an_eos_past_the_vocabulary_is_one_line_not_an_abort(default_model, tmp_path, command):
    from tests.conftest import run_cli

    template = Template(default_model.primary_path)
    bad = template.write(tmp_path / "bad-eos.gguf", {"tokenizer.ggml.eos_token_id": (U32, template.n_vocab + 3)})
    args = ["run", "--model", str(bad), "hi"] if command == "run" else ["serve", "--port", "0", "--model", str(bad)]
    out = run_cli(*args, timeout=120)
    assert out.returncode == 1 and out.stderr.startswith("autoglm: error:"), (out.returncode, out.stderr[-2000:])
    assert "outside the vocabulary" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("template, kind", [("{{ 1 / 0 }}", "ZeroDivisionError"),
                                            ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
                                            ("{{ messages[0]['content'] < 1 }}", "TypeError")])
def test_a_chat_template_that_raises_is_one_line_in_run_chat_and_extract(default_model, tmp_path, template, kind):
    from tests.conftest import run_cli

    model = Template(default_model.primary_path).write(tmp_path / "t.gguf",
                                                       {"tokenizer.chat_template": (STR, template)})
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "object", "properties": {"a": {"type": "string"}}}')
    for args, stdin in ((("run", "--model", str(model), "hi"), None), (("chat", "--model", str(model)), "hi\n"),
                        (("extract", "--model", str(model), "--schema", str(schema), "hi"), None)):
        out = run_cli(*args, stdin=stdin, timeout=120)
        assert "Traceback" not in out.stderr and f"the model's chat template failed: {kind}" in out.stderr, \
            (args, out.stderr[-1500:])
        if args[0] != "chat":  # chat says it and carries on to the next line (then ends at end of input)
            assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
