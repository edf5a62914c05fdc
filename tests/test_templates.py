"""Model-supplied chat templates are code: bounded in time, output and arithmetic (fast tier)."""

from __future__ import annotations

import json
import subprocess
import sys
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
    ("{% set s = 'a' * 1000000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", "took over"),
    ("{% macro f(n) %}{% for i in range(100000) %}{{ f(n) if n < 0 }}{% endfor %}{% endmacro %}"
     "{% for i in range(100000) %}{{ f(i) }}{% endfor %}", "took over"),
])
def test_hostile_templates_are_stopped_with_one_line(template, why):
    started = time.monotonic()
    with pytest.raises(BackendError, match="chat template was stopped") as caught:
        render(template, MSGS, timeout_s=0.5)
    assert why in str(caught.value) and "\n" not in str(caught.value)
    assert time.monotonic() - started < 5


def test_rendering_leaves_a_debugger_or_coverage_tracer_in_place():
    """The deadline needs no sys.settrace: a tracer already installed (coverage, a debugger) keeps
    seeing the template's work, and is still the tracer afterwards."""
    seen: list[str] = []

    def tracer(frame, event, arg):  # noqa: ANN001 - sys.settrace's signature
        if event == "call" and frame.f_code.co_filename == "<template>" and frame.f_code.co_name != "<module>":
            seen.append(frame.f_code.co_name)  # the render functions (the module body ran when it compiled)
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        assert render(CHATML, MSGS).startswith("<|im_start|>user")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)
    assert seen  # the template's own code ran under the user's tracer


def test_sandbox_escapes_still_fail():
    with pytest.raises(BackendError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", MSGS)


_BIG = '{% set s = "x" * 1000000 %}'
MEMORY_BOMBS = [
    '{{ "x" | center(1000000000) }}',
    '{{ "x".center(1000000000) }}',
    '{{ "x" | indent(1000000000) }}',
    '{{ "%1000000000d" % 1 }}',
    '{{ "{:>1000000000}".format(1) }}',
    '{{ "x" | tojson(indent=1000000000) }}',
    _BIG + '{{ s | replace("", s) }}',
    _BIG + '{{ ([s] * 1000) | join }}',
    _BIG + '{{ [s] * 1000 }}',
    _BIG + "{{ s" + " ~ s" * 200 + " }}",
    _BIG + '{% set ns = namespace(v=s) %}{% for i in range(40) %}{% set ns.v = ns.v ~ ns.v %}{% endfor %}',
    _BIG + '{% set ns = namespace(v=s) %}{% for i in range(40) %}{% set ns.v = ns.v + ns.v %}{% endfor %}',
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_single_calls_that_would_allocate_gigabytes_are_refused_before_they_run():
    """Each of these allocates 1 GB or more well inside the deadline unless sized beforehand; the
    child's peak memory shows it (VmHWM: ru_maxrss would carry the forking test process's own peak
    across exec)."""
    code = (
        "import json, sys\n"
        "from autoglm.engine.errors import BackendError\n"
        "from autoglm.engine.tasks.chat import render\n"
        "out = []\n"
        "for t in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        render(t, [{'role': 'user', 'content': 'hi'}], timeout_s=20)\n"
        "        out.append('rendered')\n"
        "    except BackendError as exc:\n"
        "        out.append(str(exc))\n"
        "peak = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))\n"
        "print(json.dumps([out, int(peak.split()[1]) // 1024]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(MEMORY_BOMBS)], capture_output=True, text=True,
                          timeout=120, check=True)
    messages, peak_mb = json.loads(done.stdout)
    for template, message in zip(MEMORY_BOMBS, messages, strict=True):
        assert "chat template was stopped" in message and "could make over" in message, (template, message)
    assert peak_mb < 400, peak_mb


def test_the_bounds_leave_a_long_conversation_alone():
    long = [{"role": ["user", "assistant"][i % 2], "content": "word " * 20000} for i in range(8)]
    template = ("{% for m in messages %}{{ m.role | upper }}: {{ m.content | trim | replace('\\n', ' ') }}"
                "{{ '\\n' ~ m.content[:10] ~ '\\n' }}{% endfor %}{{ messages | length }}")
    assert render(template, long).endswith("8")
