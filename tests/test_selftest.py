"""The kernel self-test must survive a native crash in its child and steer the planner away."""

import os
import signal
import sys

import pytest

from autoglm.engine import selftest
from autoglm.engine.backends import native
from autoglm.engine.planner import make_plan
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # real models or processes (the full tier)

SEGV_CHILD = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]


def test_segfaulting_child_is_caught_cached_and_avoided(home, default_model):
    device = native.probe_device()
    verdict = selftest.check(device, default_model.primary_path, "Q4_1", argv=SEGV_CHILD)
    assert os.getpid() and verdict.outcome == "crashed" and not verdict.ok
    assert "SIGSEGV" in verdict.detail
    cached = selftest.cached_verdict(device, "extra_bufts:Q4_1")
    assert cached is not None and cached.outcome == "crashed"
    from autoglm.engine.models.manager import resolve

    plan = make_plan(resolve(None).facts, device, selftest.check(device, default_model.primary_path, "Q4_1"))
    assert plan.use_extra_bufts is False
    assert "SIGSEGV" in plan.reasons["use_extra_bufts"]


def test_after_a_crash_verdict_the_cli_runs_with_the_safe_configuration(home, default_model):
    selftest.check(native.probe_device(), default_model.primary_path, "Q4_1", argv=SEGV_CHILD)
    doctor = run_cli("doctor")
    assert doctor.returncode == 0, doctor.stderr
    assert "crashed - child killed by SIGSEGV" in doctor.stdout
    assert "use_extra_bufts=False" in doctor.stdout
    run = run_cli("run", "--temperature", "0", "--max-tokens", "16", "Say hello.")
    assert run.returncode == 0 and run.stdout.strip(), run.stderr


def test_other_failures_are_not_cached_and_timeouts_are_caught(home, default_model):
    device = native.probe_device()
    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    v = selftest.check(device, default_model.primary_path, "QX_TEST", argv=failing)
    assert v.outcome == "failed" and "exit 3" in v.detail
    assert selftest.cached_verdict(device, "extra_bufts:QX_TEST") is None
    slow = selftest.run_child([sys.executable, "-c", "import time; time.sleep(30)"], "x", "m", timeout=1)
    assert slow.outcome == "timeout"
    abort = selftest.run_child([sys.executable, "-c", "import os; os.abort()"], "x", "m")
    assert abort.outcome == "crashed" and signal.Signals.SIGABRT.name in abort.detail


def test_real_probe_child_on_the_real_model(home, default_model):
    """The real extra-buffer path on this machine: whatever it does, we get a verdict, not a crash."""
    device = native.probe_device()
    v = selftest.check(device, default_model.primary_path, "Q4_1", refresh=True)
    assert v.outcome in ("passed", "crashed"), v.detail
    assert selftest.cached_verdict(device, "extra_bufts:Q4_1").outcome == v.outcome


def test_a_gpu_offload_that_crashes_its_child_falls_back_to_the_cpu_with_the_reason(home, default_model):
    """A broken driver or a CUDA build for another GPU kills the process in its first CUDA call: the
    first offloaded load runs in a child, and a crash there plans the CPU (recorded GPU profile)."""
    from autoglm.engine.hardware import DeviceFacts
    from autoglm.engine.models.manager import resolve
    from tests.conftest import DATA

    device = DeviceFacts.load(DATA / "devices" / "desktop-rtx2060-6gb.json")
    verdict = selftest.check_gpu(device, default_model.primary_path, "Q4_1", argv=SEGV_CHILD)
    assert verdict.outcome == "crashed" and "SIGSEGV" in verdict.detail
    assert selftest.cached_verdict(device, "gpu_offload:Q4_1").outcome == "crashed"
    facts = resolve(None).facts
    assert make_plan(facts, device).gpu_layers == 31  # what it would plan without the verdict
    plan = make_plan(facts, device, gpu_verdict=selftest.check_gpu(device, default_model.primary_path, "Q4_1"))
    assert plan.gpu_layers == 0 and "SIGSEGV" in plan.reasons["gpu_layers"] and "CPU" in plan.reasons["gpu_layers"]
