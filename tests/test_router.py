"""The task router: config.toml's [tasks] maps a task to a model; flags win; mistakes are one line."""

from __future__ import annotations

import re

import pytest

from autoglm.engine.errors import InvalidArgumentError
from autoglm.engine.router import _to_toml, route, routes
from tests.conftest import run_cli

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    monkeypatch.setenv("AUTOGLM_CONFIG", str(path))
    return path


def test_no_config_means_defaults_and_an_explicit_model_wins(config):
    assert routes() == {} and route("chat") is None
    config.write_text('[tasks]\nchat = "my-chat"\nclassify = "news"\n')
    assert route("chat") == "my-chat" and route("classify") == "news" and route("embed") is None
    assert route("chat", "other") == "other"


@pytest.mark.parametrize("text, message", [
    ("[tasks\n", "is not valid TOML"),
    ('[tasks]\ntranslate = "m"\n', "unknown task 'translate'"),
    ("[tasks]\nchat = 3\n", "tasks.chat must be a model name in quotes"),
    ('tasks = "chat"\n', "[tasks] must be a table"),
])
def test_a_broken_config_is_one_line_naming_the_file(config, text, message):
    config.write_text(text)
    with pytest.raises(InvalidArgumentError, match=re.escape(message)) as err:
        routes()
    assert str(config) in str(err.value) and "\n" not in str(err.value)


def test_unknown_task_is_refused(config):
    with pytest.raises(InvalidArgumentError, match="unknown task"):
        route("summarize")


def test_the_config_is_rewritten_as_valid_toml_with_other_settings_kept():
    data = {"theme": "dark", "tasks": {"chat": 'we"ird\\name', "embed": "ü-enc"}, "gui": {"width": 900, "dark": True}}
    assert tomllib.loads(_to_toml(data)) == data


def test_route_cli_mistakes_are_one_line(config):
    out = run_cli("route", "summarize")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unknown task" in out.stderr
    out = run_cli("route", "chat", "no-such-model")
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "no installed model" in out.stderr
    assert not config.exists()
