"""Where the engine keeps its data: one root so a user can move or wipe it in one place."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

from autoglm.engine.process import frozen


def home() -> Path:
    """The data root: ``AUTOGLM_HOME`` if set, else the platform's user data dir."""
    env = os.environ.get("AUTOGLM_HOME")
    root = Path(env).expanduser() if env else Path(platformdirs.user_data_dir("autoglm", appauthor=False))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return root


def _subdir(name: str) -> Path:
    path = home() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only store still serves what it holds; a write there says why
        pass
    return path


def models_dir() -> Path:
    return _subdir("models")


def bundled_models_dir() -> Path | None:
    """Models shipped inside a PyInstaller bundle (``build.py --with-model``), read-only: the first
    run works offline without copying the file into the user's store."""

    bundle = getattr(sys, "_MEIPASS", None) if frozen() else None
    path = Path(bundle) / "models" if bundle else None
    return path if path is not None and path.is_dir() else None


def cache_dir() -> Path:
    """Probe results and kernel self-test verdicts; safe to delete."""
    return _subdir("cache")


def tmp_dir() -> Path:
    """Staging area on the same file system as the store, so installs can rename atomically."""
    return _subdir("tmp")
