"""The last step of every install job (pull, import, quantize): a staged GGUF becomes a model
version only after llama.cpp has loaded it in a separate process. Install policy, kept out of the
store, which only persists."""

from __future__ import annotations

from autoglm.engine.errors import InvalidModelError
from autoglm.engine.models.gguf_info import read_gguf, remember
from autoglm.engine.models.store import FileEntry, Manifest, Staging, get
from autoglm.engine.selftest import load_check


def install_gguf(stage: Staging, *, name: str, version: str, source: str, files: list[FileEntry],
                 source_sha256: str | None = None) -> Manifest:
    """Validate a staged GGUF (``files[0]`` is the one to load), describe it from its own header,
    install it, and seed the facts cache so the first run does not parse the file again."""
    model_facts = read_gguf(stage.dir / files[0].path)
    verdict = load_check(stage.dir / files[0].path)
    if not verdict.ok:
        kept = "; the installed version stays current" if get(name) else "; nothing installed"
        why = verdict.detail.partition(": ")[2] if verdict.outcome == "failed" else verdict.summary()
        raise InvalidModelError(f"{name} {version}: llama.cpp cannot load it ({why}){kept}")
    manifest = Manifest(
        name=name, version=version, source=source, format="gguf", files=files, primary=files[0].path,
        quant=model_facts.quant, architecture=model_facts.architecture, size=sum(f.size for f in files),
        context_length=model_facts.context_length, license=model_facts.license, source_sha256=source_sha256,
    )
    installed = stage.commit(manifest)
    remember(installed.primary_path, model_facts)
    return installed
