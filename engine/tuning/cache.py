"""Measured settings kept per model sha256 x device x llama.cpp build (and GPU layers): a new
build, another CPU or another file measures again; the same ones never do."""

from __future__ import annotations

import json
from pathlib import Path

from autoglm.engine import paths
from autoglm.engine.fs import write_cache
from autoglm.engine.hardware import DeviceFacts
from autoglm.engine.tuning.search import Tuned


def _path() -> Path:
    return paths.cache_dir() / "tuned.json"


def model_key(model) -> str:  # noqa: ANN001 - a ResolvedModel (models.manager sits above this layer)
    """The model file's sha256 from its manifest when installed; a file used in place is known by its
    path, size and modification time (hashing a multi-GB file at every start would cost more than tuning saves)."""
    if model.manifest is not None and model.manifest.files:
        return model.manifest.files[0].sha256
    stat = Path(model.path).stat()
    return f"local:{Path(model.path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def key(device: DeviceFacts, model_sha: str, gpu_layers: int) -> str:
    return f"{model_sha}|{device.fingerprint()}|cores {device.cpu.logical_cores}|ngl {gpu_layers}"


def _load() -> dict[str, dict]:
    try:
        data = json.loads(_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def lookup(device: DeviceFacts, model_sha: str, gpu_layers: int) -> Tuned | None:
    entry = _load().get(key(device, model_sha, gpu_layers))
    try:
        return Tuned.from_dict(entry) if entry else None
    except (KeyError, TypeError):  # written by another version: measure again
        return None


def store(device: DeviceFacts, model_sha: str, gpu_layers: int, tuned: Tuned) -> None:
    data = _load()
    data[key(device, model_sha, gpu_layers)] = tuned.to_dict()
    write_cache(_path(), json.dumps(data, indent=1))


def lookup_variant(device: DeviceFacts, model_sha: str) -> dict | None:
    """The version of this model `tune --quants` chose here: {"name", "reason", "variants"}."""
    entry = _load().get("variant|" + key(device, model_sha, 0))
    return entry if isinstance(entry, dict) and isinstance(entry.get("name"), str) else None


def store_variant(device: DeviceFacts, model_sha: str, choice: dict) -> None:
    data = _load()
    data["variant|" + key(device, model_sha, 0)] = choice
    write_cache(_path(), json.dumps(data, indent=1))


__all__ = ["key", "lookup", "lookup_variant", "model_key", "store", "store_variant"]
