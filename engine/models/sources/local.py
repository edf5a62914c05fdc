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

from engine.errors import InvalidModelError, ModelNotFoundError
from engine.models.progress import Progress, check_cancel
from engine.models.store import CHUNK, FileEntry, Manifest, Staging, install_gguf, sha256_file

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
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not SKIP_DIRS & set(p.relative_to(folder).parts[:-1]) and not p.name.startswith("."))


def _hf_architecture(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"{folder}/config.json is not readable JSON ({exc})") from None
    archs = config.get("architectures") or []
    return str(archs[0] if archs else config.get("model_type", "unknown"))


def import_path(path: str | Path, *, name: str | None = None, link: bool = False,
                progress: Progress | None = None, cancel: threading.Event | None = None) -> Manifest:
    """Install a local model; the version is the content's hash, so re-importing the same bytes is a no-op."""
    src = Path(path).expanduser()
    if not src.exists():
        raise ModelNotFoundError(f"{src}: no such file or folder")
    name = name or default_name(src)
    how = "link" if link else "copy"
    with Staging() as stage:
        if src.is_file() and src.suffix == ".gguf":
            sha = _place(src, stage.dir / src.name, link, progress, cancel)
            return install_gguf(stage, name=name, version=sha[:12], source=f"file:{src.resolve()} ({how})",
                                files=[FileEntry(src.name, sha, src.stat().st_size)])
        if src.is_file() and src.suffix == ".onnx":
            _check_onnx(src)
            sources = [src] + [p for p in src.parent.glob(f"{src.name}*") if p != src and p.suffix != ".onnx"]
            fmt, primary, arch = "onnx", src.name, "onnx"
            base = src.parent
        elif src.is_dir():
            if not (src / "config.json").is_file():
                raise InvalidModelError(f"{src} is not a Hugging Face model folder (no config.json)")
            sources = _folder_files(src)
            if not any(p.suffix in WEIGHT_SUFFIXES for p in sources):
                raise InvalidModelError(f"{src} has a config.json but no weights ({', '.join(WEIGHT_SUFFIXES)})")
            fmt, primary, arch = "hf", "config.json", _hf_architecture(src)
            base = src
        else:
            raise InvalidModelError(f"{src}: not a .gguf file, an .onnx file or a Hugging Face model folder")
        entries = []
        for p in sources:
            rel = str(p.relative_to(base))
            entries.append(FileEntry(rel, _place(p, stage.dir / rel, link, progress, cancel), p.stat().st_size))
        version = hashlib.sha256("".join(e.sha256 for e in entries).encode()).hexdigest()[:12]
        manifest = Manifest(name=name, version=version, source=f"file:{src.resolve()} ({how})", format=fmt,
                            files=entries, primary=primary, architecture=arch, size=sum(e.size for e in entries))
        return stage.commit(manifest)


def _check_onnx(path: Path) -> None:
    """An ONNX file is a protobuf ModelProto whose first field is ir_version (tag 0x08)."""
    with path.open("rb") as fh:
        head = fh.read(2)
    if len(head) < 2 or head[0] != 0x08:
        raise InvalidModelError(f"{path} is not an ONNX model (it does not start with an ONNX header)")
