"""The model store: verified files plus a manifest per model version, installed atomically.

Layout under ``paths.models_dir()``::

    <name>/<version>/manifest.json   what the version is and the sha256 of every file
    <name>/<version>/<files>
    <name>/current                   the version in use (replaced atomically)

A version directory only appears by ``os.rename`` of a staging directory whose files were
verified (and, for GGUF, loaded by llama.cpp in a child process), so a crash or kill at any moment
leaves either the old state or the new one, never a half model. Installing a new version keeps
the one it replaces, so ``rollback`` can switch back; older ones are pruned.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from autoglm.engine import paths
from autoglm.engine.errors import (
    IntegrityError,
    InvalidArgumentError,
    InvalidModelError,
    ModelNotFoundError,
    StorageError,
)
from autoglm.engine.fs import storage_error, write_atomic, write_cache

CHUNK = 1 << 20


@dataclass
class FileEntry:
    path: str  # relative to the version directory
    sha256: str
    size: int


@dataclass
class Manifest:
    name: str
    version: str
    source: str
    format: str
    files: list[FileEntry]
    primary: str  # the file a backend loads
    quant: str = "unknown"
    architecture: str = "unknown"
    size: int = 0
    context_length: int = 0
    license: str | None = None
    source_sha256: str | None = None  # hash of what was fetched (e.g. the wheel), for provenance
    installed_at: float = field(default_factory=time.time)
    bundled: Path | None = field(default=None, compare=False)  # the read-only store it came from, if not ours

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["bundled"]
        return data

    @classmethod
    def from_dict(cls, data: Any, bundled: Path | None = None, folder: str | None = None) -> Manifest:
        """A manifest read from disk, checked field by field: a damaged or hand-edited one is
        refused in one line (InvalidModelError) instead of a TypeError wherever it is used.
        ``folder``: the store folder it was read from, to name the model when its name is damaged."""
        problem = _manifest_problem(data)
        if problem:
            named = data.get("name") if isinstance(data, dict) else None
            name = folder or (named if isinstance(named, str) else "?")
            raise InvalidModelError(f"model {name[:64]}: its manifest.json is damaged ({problem}); "
                                    f"remove it with `autoglm models rm {name[:64]}` and install it again")
        known = {f.name for f in fields(cls)} - {"bundled"}
        data = {k: v for k, v in data.items() if k in known}  # a newer version's fields are read past
        data["files"] = [FileEntry(**{k: f[k] for k in ("path", "sha256", "size")}) for f in data["files"]]
        return cls(**data, bundled=bundled)

    @property
    def directory(self) -> Path:
        return (self.bundled or paths.models_dir()) / self.name / self.version

    @property
    def primary_path(self) -> Path:
        return self.directory / self.primary


_FIELD_TYPES: dict[str, Any] = {"name": str, "version": str, "source": str, "format": str, "primary": str,
                                "quant": str, "architecture": str, "size": int, "context_length": int,
                                "license": (str, type(None)), "source_sha256": (str, type(None)),
                                "installed_at": (int, float)}


def _manifest_problem(data: Any) -> str | None:
    """What is wrong with a manifest's JSON, or None: every field a reader relies on, by type, and
    every path inside the version folder."""
    if not isinstance(data, dict):
        return f"a {type(data).__name__}, not an object"
    for key in ("name", "version", "source", "format", "files", "primary"):
        if key not in data:
            return f"no '{key}'"
    for key, kind in _FIELD_TYPES.items():
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            return f"'{key}' is a {type(data[key]).__name__}"
    if not _NAME.match(data["name"]) or not _NAME.match(data["version"]):
        return "a name or version that is not a plain name"
    files = data["files"]
    if not isinstance(files, list) or not files:
        return "'files' is not a list of files"
    for f in files:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not isinstance(f.get("sha256"), str) \
                or not isinstance(f.get("size"), int) or isinstance(f.get("size"), bool) or f["size"] < 0:
            return "a file entry without a path, sha256 and size"
        if f["path"].startswith(("/", "\\")) or ".." in Path(f["path"]).parts or not f["path"]:
            return f"a file path outside its folder ({f['path'][:64]})"
    if data["primary"] not in {f["path"] for f in files}:
        return f"its primary file {data['primary'][:64]!r} is not among its files"
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sweep_stale_stages() -> None:
    """Remove staging dirs left by killed processes (their owner pid is gone)."""
    for stage in paths.tmp_dir().glob("stage-*"):
        try:
            pid = int((stage / ".owner").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stage, ignore_errors=True)
        except (OSError, ValueError):
            continue  # being created right now, or not ours to judge


class Staging:
    """A private directory on the store's file system that becomes a model version on commit."""

    def __init__(self) -> None:
        sweep_stale_stages()
        try:
            paths.tmp_dir().mkdir(parents=True, exist_ok=True)  # says why when the store is read-only
            self.dir = Path(tempfile.mkdtemp(dir=paths.tmp_dir(), prefix="stage-"))
            (self.dir / ".owner").write_text(str(os.getpid()))
        except OSError as exc:
            raise storage_error(exc) or exc from None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, manifest: Manifest) -> Manifest:
        """Verify every file, write the manifest, rename into place and make it current. The name and
        version become folder names: whatever source they came from, they must be plain names."""
        problem = _manifest_problem(manifest.to_dict())
        if problem:
            raise InvalidArgumentError(f"cannot install {manifest.name[:64]!r} {manifest.version[:64]!r}: {problem}")
        try:
            previous = get(manifest.name)
        except InvalidModelError:  # a damaged one is replaced: installing again is its cure
            previous = None
        if previous is not None and previous.format != manifest.format:
            # a name belongs to one kind of model: a classifier trained under a chat model's name used to
            # replace its current version (twice, and the GGUF was pruned for good)
            raise InvalidArgumentError(f"{manifest.name} is already a {previous.format} model; choose another name "
                                       f"(or `autoglm models rm {manifest.name}` first)")
        for entry in manifest.files:
            actual = sha256_file(self.dir / entry.path)
            if actual != entry.sha256:
                raise IntegrityError(f"{entry.path}: sha256 {actual} does not match the source's {entry.sha256}")
        write_atomic(self.dir / "manifest.json", json.dumps(manifest.to_dict(), indent=2))
        (self.dir / ".owner").unlink(missing_ok=True)
        target = paths.models_dir() / manifest.name / manifest.version
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # same version already installed and verified: keep it
            shutil.rmtree(self.dir, ignore_errors=True)
            manifest = Manifest.from_dict(json.loads((target / "manifest.json").read_text()))
        else:
            os.chmod(self.dir, 0o755)  # mkdtemp's 0700 would hide the model from other users of a shared store
            try:
                os.rename(self.dir, target)
            except OSError:
                if not (target / "manifest.json").is_file():
                    raise
                # another install of this very version won the race: its files were verified too
                shutil.rmtree(self.dir, ignore_errors=True)
                manifest = Manifest.from_dict(json.loads((target / "manifest.json").read_text()))
        write_atomic(target.parent / "current", manifest.version)
        remember_verified(manifest)  # every file was hashed above
        keep = {manifest.version, previous.version if previous else manifest.version}
        for old in versions(manifest.name):
            if old.version not in keep:
                shutil.rmtree(old.directory, ignore_errors=True)
        return manifest


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


MAX_NAME = 100  # a folder name every file system takes, with room for the version beneath it


def check_name(name: str) -> str:
    """A model name users choose (import, classify train): letters, digits, '.', '_', '-'."""
    if len(name or "") > MAX_NAME:
        raise InvalidArgumentError(f"a model name of at most {MAX_NAME} characters, please (got {len(name)})")
    if not _NAME.match(name or ""):
        raise InvalidArgumentError(f"'{name}' is not a usable model name: use letters, digits, '.', '_' and '-'")
    return name


def get(name: str) -> Manifest | None:
    """The current version of an installed model, or None (also for anything that is not a plain
    model name, so a name from a request can never point outside the store). A damaged manifest
    raises InvalidModelError: the model is there, but cannot be used."""
    if not _NAME.match(name or ""):
        return None
    for root, bundled in ((paths.models_dir(), None), (paths.bundled_models_dir(), True)):
        if root is None:
            continue
        current = root / name / "current"
        try:
            version = current.read_text().strip()
        except OSError:
            continue
        if not _NAME.match(version):
            raise InvalidModelError(f"model {name}: its 'current' file names no version; install it again")
        try:
            data = json.loads((current.parent / version / "manifest.json").read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError, RecursionError):
            raise InvalidModelError(f"model {name}: its manifest.json is not readable JSON; remove it with "
                                    "`autoglm models rm` and install it again") from None
        return Manifest.from_dict(data, bundled=root if bundled else None, folder=name)
    return None


def versions(name: str) -> list[Manifest]:
    """Every installed version of ``name``, newest install first."""
    if not _NAME.match(name or ""):
        return []
    found = []
    for manifest_path in (paths.models_dir() / name).glob("*/manifest.json"):
        try:
            found.append(Manifest.from_dict(json.loads(manifest_path.read_text())))
        except (OSError, ValueError, RecursionError, InvalidModelError):
            continue
    return sorted(found, key=lambda m: m.installed_at, reverse=True)


def rollback(name: str, to: str | None = None) -> tuple[Manifest, Manifest]:
    """Make another installed version current (the latest other one by default); returns (from, to)."""
    current = require(name)
    others = [m for m in versions(name) if m.version != current.version]
    if to is not None:
        others = [m for m in others if m.version == to]
        if not others:
            have = ", ".join(m.version for m in versions(name))
            raise ModelNotFoundError(f"{name} has no other installed version '{to}' (installed: {have})")
    if not others:
        raise ModelNotFoundError(f"{name} has only version {current.version}; there is nothing to roll back to")
    write_atomic(paths.models_dir() / name / "current", others[0].version)
    return current, others[0]


def installed(damaged: list[str] | None = None) -> list[Manifest]:
    """The user's store, plus any models bundled with the app (read-only; the user's copy wins).
    A model whose manifest is damaged is left out, its one-line reason added to ``damaged``."""
    names = {d.name for d in paths.models_dir().iterdir() if d.is_dir()}
    bundled = paths.bundled_models_dir()
    if bundled is not None:
        names |= {d.name for d in bundled.iterdir() if d.is_dir()}
    found = []
    for name in sorted(names):
        try:
            manifest = get(name)
        except InvalidModelError as exc:
            if damaged is not None:
                damaged.append(str(exc))
            continue
        if manifest is not None:
            found.append(manifest)
    return found


def require(name: str) -> Manifest:
    manifest = get(name)
    if manifest is None:
        raise ModelNotFoundError(f"unknown model '{name}': it is not installed (see `autoglm models list`)")
    return manifest


def verify(manifest: Manifest) -> list[str]:
    """Recheck every file's bytes on disk; returns a line per problem (empty when all match)."""
    problems = []
    for entry in manifest.files:
        path = manifest.directory / entry.path
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{path}: {path.stat().st_size} bytes, expected {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{path}: sha256 does not match the manifest (the file changed on disk)")
    return problems


def _stamps_path() -> Path:
    return paths.cache_dir() / "verified.json"


def _load_stamps() -> dict[str, list[Any]]:
    try:
        data = json.loads(_stamps_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stamp(st: os.stat_result, sha256: str) -> list[Any]:
    return [st.st_size, st.st_mtime_ns, sha256]


def remember_verified(manifest: Manifest) -> None:
    """Note each file's size and mtime as just verified, so the next load need not hash it again."""
    stamps = _load_stamps()
    for entry in manifest.files:
        path = manifest.directory / entry.path
        stamps[str(path)] = _stamp(path.stat(), entry.sha256)
    write_cache(_stamps_path(), json.dumps(stamps))


def check_intact(manifest: Manifest) -> None:
    """Before a model is served: each file's size against the manifest and its (size, mtime) against
    the last verification; a file that changed since is hashed again, and a mismatch is an error
    instead of garbage from a damaged tensor. Costs a stat per file when nothing changed. Models
    bundled with the app are part of the app (a one-file bundle unpacks them afresh at every
    launch, new mtimes and all), so only their sizes are checked."""
    stamps, changed = _load_stamps(), False
    label = f"{manifest.name} {manifest.version}"
    for entry in manifest.files:
        path = manifest.directory / entry.path
        try:
            st = path.stat()
        except OSError:
            raise IntegrityError(f"{label}: {entry.path} is missing from the store; pull or import the model "
                                 "again") from None
        if st.st_size != entry.size:
            raise IntegrityError(f"{label}: {entry.path} is {st.st_size} bytes, its manifest says {entry.size} "
                                 "(the file changed on disk); pull or import the model again")
        stamp = _stamp(st, entry.sha256)
        if manifest.bundled is not None or stamps.get(str(path)) == stamp:
            continue
        if sha256_file(path) != entry.sha256:
            raise IntegrityError(f"{label}: {entry.path} changed on disk since it was installed (sha256 differs); "
                                 "pull or import the model again")
        stamps[str(path)], changed = stamp, True
    if changed:
        write_cache(_stamps_path(), json.dumps(stamps))


def remove(name: str) -> str:
    """Delete every version of ``name``; the 'current' pointer goes first so it never dangles. A
    model whose manifest is damaged is removed all the same: that is how a user gets rid of it."""
    try:
        manifest = require(name)
    except InvalidModelError:
        manifest = None
    if manifest is not None and manifest.bundled is not None:
        raise InvalidArgumentError(f"{name} ships inside this app bundle and cannot be removed")
    model_dir = paths.models_dir() / name
    if model_dir.is_symlink():
        raise InvalidArgumentError(f"{name} in the store is a symbolic link to {os.readlink(model_dir)}; autoglm does "
                                   f"not delete through links: remove {model_dir} by hand")
    try:
        (model_dir / "current").unlink(missing_ok=True)
        shutil.rmtree(model_dir)
    except OSError as exc:
        raise storage_error(exc) or StorageError(f"cannot remove {model_dir}: {exc.strerror or exc}") from None
    return name


def disk_usage() -> dict[str, int]:
    """Bytes on disk per model name, all versions included."""
    usage = {}
    for d in sorted(paths.models_dir().iterdir()):
        if d.is_dir():
            usage[d.name] = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    return usage
