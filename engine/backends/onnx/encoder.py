"""Run a converted encoder stage by stage with onnxruntime, letting the caller stop or shrink
the batch between layers (early exit, token pruning) without knowing how heads work; plain
embedding runs the fused whole-encoder graph instead, where the conversion made one.

Session settings matter for chained small graphs: with onnxruntime's default spinning threads,
per-layer sessions on 2 cores ran 4-19x slower than one session (each idle pool spins against the
next one's work); turning spinning off brings the chain to within a few percent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoglm.engine.backends.onnx.convert import ENCODER_FILE
from autoglm.engine.errors import InvalidArgumentError, InvalidModelError
from autoglm.engine.hardware import probe

BATCH = 32
# the fused graph's best batch on 2 AVX-512 cores (600 BBC chunks, 168 tokens on average):
# 142, 138 and 129 chunks/s at 4, 8 and 16; smaller batches stay in cache
FUSED_BATCH = 8
log = logging.getLogger(__name__)


@dataclass
class Tokenized:
    ids: list[np.ndarray]  # one int64 array per text, [CLS] ... [SEP], truncated to max_length
    truncated: int  # how many texts were cut


@dataclass
class Shrink:
    """What the caller wants after a layer: rows (items) to drop, tokens to drop in the rest."""

    drop_rows: np.ndarray | None = None  # bool [B]
    keep_tokens: np.ndarray | None = None  # bool [B', T] over the remaining rows


# called after each layer with (layer index, hidden [B,T,H], mask [B,T], importance [B,T], rows [B])
Visitor = Callable[[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray], Shrink | None]


def session_options(threads: int, spinning: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


class Encoder:
    def __init__(self, directory: Path, precision: str = "int8", threads: int | None = None,
                 spinning: bool = False, provider: str = "CPUExecutionProvider") -> None:
        from tokenizers import Tokenizer

        try:
            self.settings = json.loads((directory / ENCODER_FILE).read_text())
        except (OSError, ValueError):
            raise InvalidModelError(f"{directory} is not a converted encoder (no {ENCODER_FILE})") from None
        if precision not in self.settings["precisions"]:
            raise InvalidArgumentError(f"precision '{precision}' not available; choose {self.settings['precisions']}")
        self.precision = precision
        self.max_length = int(self.settings["max_length"])
        self.layers_count = int(self.settings["layers"])
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        if threads is None:
            threads = probe().cpu.big_cores or os.cpu_count() or 1
        self._options = session_options(threads, spinning)
        self._root = directory / precision
        self.provider = provider  # where it runs in the end: the CPU if the planned provider fails
        fused = self.settings.get("fused")
        # plain embedding runs the fused graph where the conversion made one; the stages load on
        # first use (early exit, classification features), so an embedding-only process never holds them
        self.fused_session: Any = self._load(fused.removesuffix(".onnx")) if fused else None
        self._staged: tuple[Any, list[Any]] | None = None
        self._staging = threading.Lock()  # a server's worker threads classify at once: load the stages once

    def _load(self, name: str) -> Any:
        """One graph of this precision on the planned provider; the first graph that the provider
        cannot start moves this encoder, with the reason logged, to the CPU for good."""
        import onnxruntime as ort

        path = str(self._root / f"{name}.onnx")
        if self.provider == "CPUExecutionProvider":
            return ort.InferenceSession(path, self._options, providers=["CPUExecutionProvider"])
        try:
            session = ort.InferenceSession(path, self._options, providers=[self.provider, "CPUExecutionProvider"])
            if session.get_providers()[0] != self.provider:
                raise RuntimeError(f"{self.provider} did not initialise (driver or CUDA libraries missing?)")
            return session
        except Exception as exc:  # noqa: BLE001 - a broken GPU runtime falls back to the CPU, with the reason
            log.warning("ONNX encoder on the CPU: %s failed: %s", self.provider, str(exc)[:300])
            self.provider = "CPUExecutionProvider"
            return ort.InferenceSession(path, self._options, providers=["CPUExecutionProvider"])

    def _stages(self) -> tuple[Any, list[Any]]:
        with self._staging:
            if self._staged is None:
                embed = self._load("embed")
                self._staged = embed, [self._load(f"layer_{i:02d}") for i in range(self.layers_count)]
            return self._staged

    def tokenize(self, texts: list[str]) -> Tokenized:
        encodings = self.tokenizer.encode_batch(texts)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        return Tokenized(ids, sum(1 for e in encodings if e.overflowing))

    @staticmethod
    def pad(ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        length = max(len(x) for x in ids)
        out = np.zeros((len(ids), length), dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.float32)
        for i, x in enumerate(ids):
            out[i, : len(x)] = x
            mask[i, : len(x)] = 1.0
        return out, mask

    def pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.settings["pooling"] == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        if self.settings["normalize"]:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

    def run(self, ids: np.ndarray, mask: np.ndarray, visit: Visitor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All layers unless ``visit`` drops every row; returns (last hidden, mask) of rows still running."""
        embed_session, layer_sessions = self._stages()
        hidden = embed_session.run(None, {"input_ids": ids})[0]
        rows = np.arange(len(ids))
        for i, session in enumerate(layer_sessions):
            hidden, importance = session.run(None, {"hidden": hidden, "mask": mask})
            step = visit(i, hidden, mask, importance, rows) if visit else None
            if step is None:
                continue
            if step.drop_rows is not None and step.drop_rows.any():
                keep = ~step.drop_rows
                hidden, mask, rows, importance = hidden[keep], mask[keep], rows[keep], importance[keep]
                if step.keep_tokens is not None:
                    step.keep_tokens = step.keep_tokens[keep]
                if not len(rows):
                    break
            if step.keep_tokens is not None:
                hidden, mask = compact(hidden, mask, step.keep_tokens)
        return hidden, mask

    def layer_features(self, texts: list[str], batch: int = BATCH) -> tuple[np.ndarray, int]:
        """Pooled features after every layer, exact: [layers, N, H]; and how many texts were cut."""
        tok = self.tokenize(texts)
        out = np.zeros((self.layers_count, len(texts), int(self.settings["hidden"])), dtype=np.float32)
        for idx in batches(tok.ids, batch):
            ids, mask = self.pad([tok.ids[i] for i in idx])

            def visit(i: int, hidden: np.ndarray, m: np.ndarray, _imp: np.ndarray, rows: np.ndarray,
                      idx: np.ndarray = idx) -> None:
                out[i, idx[rows]] = self.pool(hidden, m)

            self.run(ids, mask, visit)
        return out, tok.truncated

    def embed(self, texts: list[str], batch: int | None = None) -> tuple[np.ndarray, int]:
        """Sentence embeddings (the model's pooling and normalization), all layers; and texts cut."""
        tok = self.tokenize(texts)
        out = np.zeros((len(texts), int(self.settings["hidden"])), dtype=np.float32)
        fused = self.fused_session
        for idx in batches(tok.ids, batch or (FUSED_BATCH if fused is not None else BATCH)):
            ids, mask = self.pad([tok.ids[i] for i in idx])
            if fused is not None:
                hidden = fused.run(None, {"input_ids": ids, "mask": mask.astype(np.int32)})[0]
            else:
                hidden, mask = self.run(ids, mask)
            out[idx] = self.pool(hidden, mask)
        return out, tok.truncated


def batches(ids: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Indices grouped by similar length, so padding wastes little compute."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    return [order[i: i + size] for i in range(0, len(order), size)]


def compact(hidden: np.ndarray, mask: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop tokens per row and re-pad to the longest remaining row (positions are already baked in)."""
    keep = keep & (mask > 0)
    length = int(keep.sum(1).max())
    if length == hidden.shape[1]:
        return hidden, mask
    order = np.argsort(~keep, axis=1, kind="stable")[:, :length]  # kept tokens first, in their order
    hidden = np.take_along_axis(hidden, order[..., None], axis=1)
    mask = np.take_along_axis(keep, order, axis=1).astype(np.float32)
    return np.ascontiguousarray(hidden), mask
