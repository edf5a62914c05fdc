"""The README's examples, read out of README.md and run as written with the real default model
(Qwen2.5-Coder-0.5B-Instruct): each must answer sensibly, not merely exit 0. The rest of the suite
runs on SmolLM2-135M (conftest); these runs drop that override."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "AUTOGLM_DEFAULT_MODEL"}


def _loops(text: str) -> bool:
    words = text.lower().split()
    grams = [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
    return len(grams) > 8 and len(set(grams)) < 0.6 * len(grams)


def _run_examples() -> list[list[str]]:
    """Every `autoglm run` line in the README's shell blocks that leaves the model to the default."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            command = line.split("&&")[-1].split("  #")[0].strip()
            if command.startswith("autoglm run ") and "--model" not in command:
                found.append(shlex.split(command)[1:])
    return found


CHECKS = {"capital of France": lambda out: "Paris" in out,
          "KV caching": lambda out: "cach" in out.lower() and not _loops(out),
          "Once upon a time": lambda out: len(out.split()) >= 5 and not _loops(out)}


def test_the_readme_has_the_examples_this_test_checks():
    prompts = [args[-1] for args in _run_examples()]
    assert all(any(key in p for p in prompts) for key in CHECKS), prompts


@pytest.mark.parametrize("args", _run_examples(), ids=lambda a: a[-1][:30])
@pytest.mark.slow
def test_each_readme_run_example_answers_sensibly_with_the_default(qwen_05b, args):
    out = subprocess.run([sys.executable, "-m", "autoglm", *args], capture_output=True, text=True, env=_env(),
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    check = next(c for key, c in CHECKS.items() if key in args[-1])
    assert check(out.stdout), out.stdout


@pytest.mark.slow
def test_the_readme_python_example_answers_sensibly_with_the_default(qwen_05b):
    """The Python block up to the classifier training (its `...` stand for the user's own data)."""
    block = re.search(r"### Python API\n\n```python\n(.*?)```", README, re.S)
    assert block is not None
    lines = []
    for line in block.group(1).splitlines():
        if "train_classifier" in line:
            break
        lines.append(line)
    code = "\n".join(lines).replace("    engine.extract(", "    print('EXTRACT', engine.extract(", 1)
    code = code.replace('"age": {"type": "integer"}}})', '"age": {"type": "integer"}}}))', 1)
    code = code.replace("    engine.classify(", "    print('CLASSIFY', engine.classify(", 1)
    code = code.replace('labels=["sport", "politics"])', 'labels=["sport", "politics"]))', 1)
    code += "\n    print('EMBED', vectors.shape)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=600,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    first, _, rest = text.partition("\n")
    assert "Paris" in first and not _loops(first), text
    joke = rest.split("CLASSIFY")[0]
    assert len(joke.split()) >= 3 and not _loops(joke), text
    assert "label='sport'" in text, text
    assert "'age': 34" in text and "Ann" in text, text
    assert "EMBED (2," in text, text
