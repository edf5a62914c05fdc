"""Crash-isolated self-tests of native kernel paths that may kill the process that runs them.

llama.cpp's extra buffer types (AMX tiles, repacked weight layouts) segfault on some CPUs and
builds although the OS reports the features. We try such a path once in a child process on a
tiny decode; the verdict is cached per (CPU, flags, llama.cpp version, weight type: repacking is
chosen per tensor type), and a path that crashed is never used in-process.
The child is ``python -m engine.selftest MODEL``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from autoglm.engine import paths
from autoglm.engine.backends.llamacpp import load_llama
from autoglm.engine.fs import write_cache
from autoglm.engine.hardware import DeviceFacts
from autoglm.engine.process import module_command

EXTRA_BUFTS = "extra_bufts"
GPU_OFFLOAD = "gpu_offload"
TIMEOUT_S = 180


@dataclass
class Verdict:
    config: str
    ok: bool
    outcome: str  # "passed", "crashed", "failed", "timeout"
    detail: str
    model: str
    tested_at: float

    def summary(self) -> str:
        return f"{self.outcome}" + (f" ({self.detail})" if self.detail else "")


def cache_key(device: DeviceFacts, config: str) -> str:
    return f"{config}|{device.fingerprint(gpus=config.startswith(GPU_OFFLOAD))}"


def _cache_path() -> Path:
    return paths.cache_dir() / "kernel-selftest.json"


def _load_cache() -> dict[str, dict]:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def cached_verdict(device: DeviceFacts, config: str) -> Verdict | None:
    entry = _load_cache().get(cache_key(device, config))
    return Verdict(**entry) if entry else None


def _store(device: DeviceFacts, verdict: Verdict) -> None:

    cache = _load_cache()
    cache[cache_key(device, verdict.config)] = asdict(verdict)
    write_cache(_cache_path(), json.dumps(cache, indent=2))


def signal_name(returncode: int) -> str:
    """SIGSEGV for a child's return code -11."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_child(argv: list[str], config: str, model: str, timeout: float = TIMEOUT_S) -> Verdict:
    """Run one probe child and classify how it ended; never raises for a native crash."""
    started = time.time()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Verdict(config, False, "timeout", f"no answer in {timeout:.0f}s", model, started)
    if proc.returncode < 0:
        return Verdict(config, False, "crashed", f"child killed by {signal_name(proc.returncode)}", model, started)
    if proc.returncode != 0 or "SELFTEST OK" not in proc.stdout:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        # llama.cpp's own reason, when it logged one, says more than the Python exception after it
        why = next((ln.removeprefix("SELFTEST ").strip() for ln in reversed(lines) if ln.startswith("SELFTEST ")),
                   None) or next((ln.split("error loading model:")[-1].strip() for ln in reversed(lines)
                                  if "error loading model:" in ln), lines[-1])
        return Verdict(config, False, "failed", f"exit {proc.returncode}: {why[:200]}", model, started)
    return Verdict(config, True, "passed", "", model, started)


def check(device: DeviceFacts, model_path: str | Path, quant: str, argv: list[str] | None = None,
          refresh: bool = False) -> Verdict:
    """The cached verdict for llama.cpp's extra-buffer path, testing it first if needed.

    ``argv`` replaces the probe child (tests use a child that kills itself with SIGSEGV).
    Only clear outcomes (passed, crashed) are cached; a failure for another reason is retried
    next time but still keeps the path off for this run.
    """
    return _cached_or_run(device, f"{EXTRA_BUFTS}:{quant}", model_path, [], argv, refresh)


def check_gpu(device: DeviceFacts, model_path: str | Path, quant: str, argv: list[str] | None = None,
              refresh: bool = False) -> Verdict:
    """The same for offloading every layer to this GPU with this llama.cpp build: a broken driver,
    a build for another GPU architecture or a runtime clash kills a process in its first CUDA call,
    so the first load with layers on the GPU (and one decode) happens in a child."""
    return _cached_or_run(device, f"{GPU_OFFLOAD}:{quant}", model_path, ["--gpu"], argv, refresh)


def _cached_or_run(device: DeviceFacts, config: str, model_path: str | Path, flags: list[str],
                   argv: list[str] | None, refresh: bool) -> Verdict:
    if not refresh and argv is None:
        cached = cached_verdict(device, config)
        if cached is not None:
            return cached
    verdict = run_child(argv or module_command("autoglm.engine.selftest", *flags, str(model_path)), config,
                        Path(model_path).name)
    if verdict.outcome in ("passed", "crashed"):
        _store(device, verdict)
    return verdict


def load_check(model_path: str | Path) -> Verdict:
    """Does llama.cpp load this file and decode with it, to finite logits? Asked in a child before a
    model is installed, so a file that parses but crashes the loader (or whose weights are noise)
    never becomes a model version."""
    argv = module_command("autoglm.engine.selftest", "--safe", str(model_path))
    return run_child(argv, "load", Path(model_path).name)


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"load|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def file_check(model_path: str | Path) -> Verdict:
    """``load_check`` for a file used in place (``--model ./x.gguf``, a ``--draft`` file), cached on
    its path, size and mtime: store models were checked when installed, and a file no install
    looked at must not reach llama.cpp in the serving process first (a bad token id aborts it)."""
    path = Path(model_path)
    key = _file_key(path)
    entry = _load_cache().get(key)
    if entry is not None:
        return Verdict(**entry)
    verdict = load_check(path)
    if verdict.outcome in ("passed", "crashed", "failed"):
        cache = {k: v for k, v in _load_cache().items() if not k.startswith(f"load|{path.resolve()}|")}
        cache[key] = asdict(verdict)
        write_cache(_cache_path(), json.dumps(cache, indent=2))
    return verdict


def _probe(model_path: str, extra_bufts: bool, gpu_layers: int = 0) -> None:
    """Child side: load and decode a few tokens (extra buffers on unless asked for the safe path;
    with ``gpu_layers``, every layer offloaded and flash attention on, as the planner would run it)."""
    llm = load_llama(model_path, n_ctx=128, n_threads=os.cpu_count() or 1, use_extra_bufts=extra_bufts,
                     n_gpu_layers=gpu_layers, flash_attn=gpu_layers > 0,
                     verbose=True)  # llama.cpp's log on stderr carries its reason for refusing a file
    tokens = llm.tokenize(b"The capital of France is", add_bos=True)
    llm.eval(tokens)
    import numpy as np

    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))  # the last token's
    if not np.isfinite(logits).all() or float(logits.max()) == float(logits.min()):
        print("SELFTEST the weights give no usable next-token scores (NaN, infinite or all equal: damaged data)",
              file=sys.stderr, flush=True)
        sys.exit(3)
    llm.reset()
    out = []
    for tok in llm.generate(tokens, temp=0.0):
        out.append(tok)
        if len(out) >= 4:
            break
    print("SELFTEST OK", len(out), flush=True)


if __name__ == "__main__":
    flags = sys.argv[1:-1]
    _probe(sys.argv[-1], extra_bufts="--safe" not in flags and "--gpu" not in flags,
           gpu_layers=-1 if "--gpu" in flags else 0)
