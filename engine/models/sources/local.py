"""Local imports: a ``.gguf`` file, an ``.onnx`` file or a Hugging Face model folder.

Copy (the default) makes the store independent of the original; ``link`` symlinks to it instead,
which costs no disk, and ``models verify`` then notices if the original changes. Either way every
file's sha256 is taken at import and the model appears only through the same atomic install.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

from autoglm.engine.errors import InvalidModelError, ModelNotFoundError
from autoglm.engine.models.gguf_info import read_gguf
from autoglm.engine.models.install import install_gguf
from autoglm.engine.models.progress import Progress, check_cancel
from autoglm.engine.models.store import CHUNK, FileEntry, Manifest, Staging, check_name, sha256_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".gguf", ".pt")
SKIP_DIRS = {".git", ".cache", "__pycache__"}


def default_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "model"


def _place(src: Path, dest: Path, link: bool, progress: Progress | None, cancel: threading.Event | None) -> str:
    """Copy (hashing as we go) or symlink ``src`` to ``dest``; returns the sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(src.resolve(), dest)
        return sha256_file(src)
    digest, done, total = hashlib.sha256(), 0, src.stat().st_size
    with src.open("rb") as fin, dest.open("wb") as fout:
        while chunk := fin.read(CHUNK):
            check_cancel(cancel, f"import of {src.name}")
            digest.update(chunk)
            fout.write(chunk)
            done += len(chunk)
            if progress:
                progress(src.name, done, total)
    return digest.hexdigest()


def _folder_files(folder: Path) -> list[Path]:
    """The folder's files, without VCS/cache dirs, dotfiles, or a store manifest (ours is rewritten).
    A symbolic link may point inside the folder, or into the blobs of the Hugging Face cache repo a
    snapshot folder belongs to (that is how the cache lays files out); any other is refused: a folder
    someone else made once carried a link to /etc/passwd into the store."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / "manifest.json"
                   and not SKIP_DIRS & set(p.relative_to(folder).parts[:-1]) and not p.name.startswith("."))
    allowed = [folder.resolve()]
    if folder.resolve().parent.name == "snapshots":
        allowed.append(folder.resolve().parent.parent / "blobs")
    for p in files:
        target = p.resolve()  # a file reached through no link resolves inside the folder
        if not any(target.is_relative_to(root) for root in allowed):
            raise InvalidModelError(f"{p} is a link to {target}, outside the model folder; refused")
    return files


def _hf_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"{folder}/config.json is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InvalidModelError(f"{folder}/config.json is not a model config")
    return config


def folder_manifest(directory: Path, entries: list[FileEntry], *, name: str, version: str, source: str,
                    source_sha256: str | None = None) -> Manifest:
    """The manifest of a staged Hugging Face folder; its config.json says the architecture."""
    config = _hf_config(directory)
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    return Manifest(name=name, version=version, source=source, format="hf", files=entries, primary="config.json",
                    quant=str(config.get("torch_dtype", "unknown")), architecture=str(archs[0]),
                    size=sum(e.size for e in entries), source_sha256=source_sha256)


def import_path(path: str | Path, *, name: str | None = None, link: bool = False,
                progress: Progress | None = None, cancel: threading.Event | None = None) -> Manifest:
    """Install a local model; the version is the content's hash, so re-importing the same bytes is a no-op."""
    src = Path(path).expanduser()
    if not src.exists():
        raise ModelNotFoundError(f"{src}: no such file or folder")
    name = check_name(name) if name else default_name(src)
    how = "link" if link else "copy"
    with Staging() as stage:
        if src.is_file() and src.suffix == ".gguf":
            read_gguf(src)  # refused by the user's own path, before a copy of gigabytes
            sha = _place(src, stage.dir / src.name, link, progress, cancel)
            return install_gguf(stage, name=name, version=sha[:12], source=f"file:{src.resolve()} ({how})",
                                files=[FileEntry(src.name, sha, src.stat().st_size)])
        if src.is_file() and src.suffix == ".onnx":
            _check_onnx(src)
            # external weights are saved next to the graph as <name>.onnx.data / .onnx_data
            sources, base = [src, *(p for p in src.parent.glob(f"{src.name}?data") if p.is_file())], src.parent
        elif src.is_dir():
            if not (src / "config.json").is_file():
                raise InvalidModelError(f"{src} is not a Hugging Face model folder (no config.json)")
            sources, base = _folder_files(src), src
            if not any(p.suffix in WEIGHT_SUFFIXES for p in sources):
                raise InvalidModelError(f"{src} has a config.json but no weights ({', '.join(WEIGHT_SUFFIXES)})")
        else:
            raise InvalidModelError(f"{src}: not a .gguf file, an .onnx file or a Hugging Face model folder")
        entries = []
        for p in sources:
            rel = str(p.relative_to(base))
            entries.append(FileEntry(rel, _place(p, stage.dir / rel, link, progress, cancel), p.stat().st_size))
        version = hashlib.sha256("".join(e.sha256 for e in entries).encode()).hexdigest()[:12]
        source = f"file:{src.resolve()} ({how})"
        if src.is_dir():
            return stage.commit(folder_manifest(stage.dir, entries, name=name, version=version, source=source))
        return stage.commit(Manifest(name=name, version=version, source=source, format="onnx", files=entries,
                                     primary=src.name, architecture="onnx", size=sum(e.size for e in entries)))


def _check_onnx(path: Path) -> None:
    """An ONNX file is a protobuf ModelProto whose first field is ir_version (tag 0x08)."""
    with path.open("rb") as fh:
        head = fh.read(2)
    if len(head) < 2 or head[0] != 0x08:
        raise InvalidModelError(f"{path} is not an ONNX model (it does not start with an ONNX header)")
