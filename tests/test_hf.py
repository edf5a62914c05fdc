"""The hf: source with the real huggingface_hub client against a Hub-compatible server on loopback."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from autoglm.engine.hardware import DeviceFacts
from autoglm.engine.models.sources.hf import select
from tests.conftest import DATA, run_cli, snapshot
from tests.hf_server import COMMIT, HubServer, Repo

pytestmark = pytest.mark.slow  # real models or processes (the full tier)


@pytest.fixture(scope="module")
def quant_files(default_model, tmp_path_factory):
    """A small GGUF repo with several quant files: the real SmolLM2 and two requantizations of it."""
    from autoglm.engine.models.quantize import quantize_file

    d = tmp_path_factory.mktemp("hf-repo")
    files = {"SmolLM2-135M-Instruct-Q4_1.gguf": d / "q4_1.gguf"}
    shutil.copyfile(default_model.primary_path, files["SmolLM2-135M-Instruct-Q4_1.gguf"])
    for quant in ("Q4_0", "Q8_0"):
        out = d / f"{quant.lower()}.gguf"
        quantize_file(default_model.primary_path, out, quant)
        files[f"SmolLM2-135M-Instruct-{quant}.gguf"] = out
    readme = d / "README.md"
    readme.write_text("# test repo\n")
    files["README.md"] = readme
    return files


@pytest.fixture
def hub(quant_files):
    repos = {"test-org/SmolLM2-GGUF": Repo(dict(quant_files)),
             "test-org/private-GGUF": Repo(dict(quant_files), private=True)}
    with HubServer(repos) as server:
        yield server


def env(hub, **extra):
    return {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "5", **extra}


def test_pull_by_repo_and_quant_then_run(home, hub):
    out = run_cli("models", "pull", "hf:test-org/SmolLM2-GGUF:Q8_0", env=env(hub))
    assert out.returncode == 0, out.stderr
    listed = run_cli("models", "list").stdout
    assert "smollm2-gguf-q8_0" in listed and "hf:test-org/SmolLM2-GGUF@" in listed
    answer = run_cli("run", "--model", "hf:test-org/SmolLM2-GGUF:Q8_0", "--temperature", "0",
                     "What is the capital of France? Answer in one word.", env=env(hub))
    assert answer.returncode == 0 and "Paris" in answer.stdout, answer.stderr


def test_automatic_quant_choice_for_two_devices(quant_files):
    from autoglm.engine.models.sources.hf import RemoteFile, quant_of

    files = [RemoteFile(n, p.stat().st_size, None, quant_of(n)) for n, p in quant_files.items() if n.endswith(".gguf")]
    pc = DeviceFacts.load(DATA / "devices" / "epyc-2core-vm.json")
    pi = DeviceFacts.load(DATA / "devices" / "raspberry-pi-5.json")
    (pc_file,), pc_reason = select(files, None, pc)
    (pi_file,), pi_reason = select(files, None, pi)
    assert pc_file.quant == "Q8_0" and "best quality" in pc_reason
    assert pi_file.quant == "Q4_0" and "repacked" in pi_reason
    tiny = DeviceFacts.load(DATA / "devices" / "core2-no-avx2.json")
    tiny.ram_available = 250_000_000  # only Q4_0 (about 85 MB) fits in half of it
    (tiny_file,), _ = select(files, None, tiny)
    assert tiny_file.quant == "Q4_0"


def test_resume_after_the_connection_drops_mid_file(home, hub):
    name = "SmolLM2-135M-Instruct-Q4_0.gguf"
    size = hub.repos["test-org/SmolLM2-GGUF"].files[name].stat().st_size
    hub.faults.drop_after[name] = size // 3
    out = run_cli("models", "pull", "hf:test-org/SmolLM2-GGUF:Q4_0", env=env(hub))
    assert out.returncode == 0, out.stderr
    ranges = [r for m, p, r in hub.faults.requests if m == "GET" and p.endswith(name) and r]
    assert len(ranges) == 1
    resumed_at = int(ranges[0].removeprefix("bytes=").rstrip("-"))
    # huggingface_hub resumes from what it had flushed to disk (whole MiB chunks), not from zero
    assert 0 < resumed_at <= size // 3
    assert hub.faults.bytes_sent[name] == size + (size // 3 - resumed_at)
    assert run_cli("models", "verify", "smollm2-gguf-q4_0").returncode == 0


def test_a_corrupted_byte_is_rejected_and_nothing_registered(home, hub):
    hub.faults.corrupt.add("SmolLM2-135M-Instruct-Q4_1.gguf")
    before = snapshot(home / "models")
    out = run_cli("models", "pull", "hf:test-org/SmolLM2-GGUF:Q4_1", env=env(hub))
    assert out.returncode == 1 and "do not match the source's sha256" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert snapshot(home / "models") == before


def test_404_and_401_have_clear_messages(home, hub):
    before = snapshot(home / "models")
    missing = run_cli("models", "pull", "hf:test-org/nothing-here", env=env(hub))
    assert missing.returncode == 1 and "no repository test-org/nothing-here" in missing.stderr
    no_quant = run_cli("models", "pull", "hf:test-org/SmolLM2-GGUF:Q5_K_M", env=env(hub))
    assert no_quant.returncode == 1 and "no file or quant 'Q5_K_M'" in no_quant.stderr
    private = run_cli("models", "pull", "hf:test-org/private-GGUF:Q4_0", env=env(hub))
    assert private.returncode == 1 and "HF_TOKEN" in private.stderr, private.stderr
    for out in (missing, no_quant, private):
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert snapshot(home / "models") == before
    ok = run_cli("models", "pull", "hf:test-org/private-GGUF:Q4_0", env=env(hub, HF_TOKEN="good-token"))
    assert ok.returncode == 0, ok.stderr


def _ranges_since(hub, start: int, name: str) -> list[str | None]:
    return [r for m, p, r in hub.faults.requests[start:] if m == "GET" and p.endswith(name)]


def test_killed_pull_resumes_without_downloading_again(home, hub):
    """SIGKILL mid-file: nothing is listed, and the next pull asks only for the missing tail."""
    name = "SmolLM2-135M-Instruct-Q4_1.gguf"
    hub.repos["test-org/Kill-GGUF"] = Repo({name: hub.repos["test-org/SmolLM2-GGUF"].files[name]})
    size = hub.repos["test-org/Kill-GGUF"].files[name].stat().st_size
    hub.faults.delay[name] = 0.01  # about 15 s for the whole file
    proc = subprocess.Popen([sys.executable, "-m", "autoglm", "models", "pull", "hf:test-org/Kill-GGUF:Q4_1"],
                            env={**os.environ, **env(hub)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while hub.faults.bytes_sent.get(name, 0) < size // 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the pull ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first_run = -1
    while first_run != hub.faults.bytes_sent[name]:  # the server may write a chunk or two before it sees the pipe broke
        first_run = hub.faults.bytes_sent[name]
        time.sleep(0.5)
    assert "kill-gguf" not in run_cli("models", "list").stdout
    assert not (home / "models" / "kill-gguf-q4_1" / "current").exists()

    del hub.faults.delay[name]
    start = len(hub.faults.requests)
    out = run_cli("models", "pull", "hf:test-org/Kill-GGUF:Q4_1", env=env(hub))
    assert out.returncode == 0, out.stderr
    (resumed,) = _ranges_since(hub, start, name)
    assert resumed is not None
    offset = int(resumed.removeprefix("bytes=").rstrip("-"))
    assert size // 3 < offset <= first_run  # what reached the disk before the kill is kept
    assert hub.faults.bytes_sent[name] - first_run == size - offset  # and only the rest is sent again
    assert "kill-gguf-q4_1" in run_cli("models", "list").stdout
    assert run_cli("models", "verify", "kill-gguf-q4_1").returncode == 0
    assert not list((home / "tmp").glob("stage-*"))  # the killed pull's staging dir was swept


def test_progress_callback_and_cancel_then_resume(home, hub, monkeypatch):
    """The API the GUI uses: byte progress per file, cancel installs nothing, a later pull resumes."""
    import threading

    from huggingface_hub import constants

    from autoglm.engine.errors import CancelledError
    from autoglm.engine.models import store
    from autoglm.engine.models.manager import pull

    # what HF_ENDPOINT does when huggingface_hub is imported, for this already-imported process
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    name = "SmolLM2-135M-Instruct-Q4_0.gguf"
    hub.repos["test-org/Cancel-GGUF"] = Repo({name: hub.repos["test-org/SmolLM2-GGUF"].files[name]})
    size = hub.repos["test-org/Cancel-GGUF"].files[name].stat().st_size
    cancel, reports = threading.Event(), []

    def progress(label: str, done: int, total: int) -> None:
        reports.append((label, done, total))
        if done >= size // 4:
            cancel.set()

    with pytest.raises(CancelledError, match="nothing was installed"):
        pull("hf:test-org/Cancel-GGUF:Q4_0", progress=progress, cancel=cancel)
    assert store.get("cancel-gguf-q4_0") is None
    assert reports[0][0] == name and all(total == size for _, _, total in reports)
    assert [d for _, d, _ in reports] == sorted(d for _, d, _ in reports)
    stopped_at = reports[-1][1]

    start, reports[:] = len(hub.faults.requests), []
    manifest = pull("hf:test-org/Cancel-GGUF:Q4_0", progress=lambda *r: reports.append(r))
    assert manifest.name == "cancel-gguf-q4_0" and reports[-1][1:] == (size, size)
    (resumed,) = _ranges_since(hub, start, name)
    assert resumed == f"bytes={stopped_at}-"


def test_tune_quants_takes_the_repos_own_files_and_its_most_precise_one_as_reference(hub, tmp_path):
    """A model pulled from a repo that offers several quants: `tune --quants` downloads the repo's
    own files of those quants (same commit) instead of re-quantizing the installed one, measures
    every version against the most precise (Q8_0 here, not the Q4_1 that was installed) and keeps
    the fastest inside the quality budget for later runs."""
    import json

    e = env(hub, AUTOGLM_HOME=str(tmp_path))
    out = run_cli("models", "pull", "hf:test-org/SmolLM2-GGUF:Q4_1", env=e)
    assert out.returncode == 0, out.stderr
    hub.faults.requests.clear()
    bad = run_cli("tune", "smollm2-gguf-q4_1", "--quants", "Q8_0,IQ4_XS", env=e)  # IQ4_XS: neither offered nor makeable
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1, bad.stderr
    assert "offers Q4_0, Q4_1, Q8_0" in bad.stderr
    # refused before any download
    assert not [p for m, p, _ in hub.faults.requests if m == "GET" and p.endswith(".gguf")]
    result = run_cli("tune", "smollm2-gguf-q4_1", "--quants", "Q8_0,Q4_0", "--budget", "6", env=e)
    assert result.returncode == 0, result.stderr
    assert "downloading Q8_0" in result.stderr and "quantizing" not in result.stderr
    fetched = {p.rsplit("/", 1)[1] for m, p, _ in hub.faults.requests if m == "GET" and p.endswith(".gguf")}
    assert fetched == {"SmolLM2-135M-Instruct-Q8_0.gguf", "SmolLM2-135M-Instruct-Q4_0.gguf"}
    rows = {line.split()[1]: line for line in result.stdout.splitlines()
            if line.startswith("smollm2-gguf") and len(line.split()) > 2}
    assert "(ref)" in rows["Q8_0"] and "KL" not in rows["Q8_0"]
    assert float(rows["Q4_1"].split()[4]) < float(rows["Q4_0"].split()[4])  # Q4_0 strays further from Q8_0
    listed = run_cli("models", "list", env=e).stdout
    assert "smollm2-gguf-q8_0" in listed and "smollm2-gguf-q4_0" in listed
    chosen = next(name for name, line in rows.items() if "<- chosen" in line)
    doctor = json.loads(run_cli("doctor", "--json", "--model", "smollm2-gguf-q4_1", env=e).stdout)
    assert doctor["model"]["label"].lower().startswith(f"smollm2-gguf-{chosen.lower()}")
    assert ("instead of" if chosen != "Q8_0" else "no other version") in doctor["plan"]["reasons"]["model"]


@pytest.mark.parametrize("files, commit", [
    ({"...gguf": "q4_1"}, COMMIT),  # its stem '..' became the model's folder name
    ({"SmolLM2-Q4_1.gguf": "q4_1"}, "../../../xyz"),  # the version folder, and `current`, outside the store
    ({"sub/../../escape-Q4_1.gguf": "q4_1"}, COMMIT),
    ({"/abs-Q4_1.gguf": "q4_1"}, COMMIT),
])
def test_names_and_revisions_from_a_hostile_hub_never_touch_a_path(home, quant_files, tmp_path, files, commit):
    real = {name: quant_files[f"SmolLM2-135M-Instruct-{q.upper()}.gguf"] for name, q in files.items()}
    before_home, before_around = snapshot(home), sorted(p.name for p in home.parent.iterdir())
    with HubServer({"test-org/Hostile-GGUF": Repo(real)}, commit=commit) as server:
        out = run_cli("models", "pull", "hf:test-org/Hostile-GGUF", env=env(server))
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "refused" in out.stderr, out.stderr
    assert snapshot(home) == before_home and sorted(p.name for p in home.parent.iterdir()) == before_around
    assert not list(home.parent.rglob("xyz")) and not list(home.parent.rglob("escape-Q4_1.gguf"))
