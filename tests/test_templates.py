"""Model-supplied chat templates are code: bounded in time, output and arithmetic (fast tier)."""

from __future__ import annotations

import time

import pytest

from autoglm.engine.errors import BackendError
from autoglm.engine.tasks.chat import CHATML, render

MSGS = [{"role": "user", "content": "hi"}]


def test_an_ordinary_template_renders():
    assert render(CHATML, MSGS) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("template, why", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took over"),
    ("{{ 'x' * 1000000000 }}", "str of 1 times"),
    ("{{ [1] * 100000000 }}", "list of 1 times"),
    ("{{ 2 ** 100000000 }}", "2 ** 100000000"),
    ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "output passed"),
])
def test_hostile_templates_are_stopped_with_one_line(template, why):
    started = time.monotonic()
    with pytest.raises(BackendError, match="chat template was stopped") as caught:
        render(template, MSGS, timeout_s=0.5)
    assert why in str(caught.value) and "\n" not in str(caught.value)
    assert time.monotonic() - started < 5


def test_sandbox_escapes_still_fail():
    with pytest.raises(BackendError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", MSGS)
