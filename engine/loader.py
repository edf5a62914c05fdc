"""From what the user typed to a loaded backend: resolve, probe, self-test, plan, load.

The one path the CLI, the server and the GUI's engine child share, so a kernel that crashed in
its self-test can never be loaded in-process by any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoglm.engine import hardware, selftest
from autoglm.engine.backends import native
from autoglm.engine.backends.llama_executor import LlamaExecutor
from autoglm.engine.backends.llamacpp import LlamaBackend
from autoglm.engine.backends.split_executor import SplitExecutor
from autoglm.engine.errors import InvalidModelError, ModelNotFoundError
from autoglm.engine.models.manager import ResolvedModel, resolve
from autoglm.engine.models.progress import Progress
from autoglm.engine.planner import Overrides, Plan, make_plan, onnx_provider, split_fits
from autoglm.engine.scheduler.batch import Scheduler
from autoglm.engine.scheduler.draft_model import ModelDrafter, check_vocab
from autoglm.engine.scheduler.session import ScheduledBackend
from autoglm.engine.scheduler.step_planner import MIN_CHUNK
from autoglm.engine.tuning import cache as tuning_cache
from autoglm.engine.tuning.search import Tuned


@dataclass
class Prepared:
    model: ResolvedModel
    device: hardware.DeviceFacts
    verdict: selftest.Verdict | None
    plan: Plan
    gpu_verdict: selftest.Verdict | None = None  # the GPU offload self-test, when the plan wanted the GPU
    tuned: Tuned | None = None  # what `autoglm tune` measured for this model on this device


def prepare(ref: str | None, overrides: Overrides | None = None, progress: Progress | None = None,
            install: bool = True, measured: bool = True) -> Prepared:
    """Everything short of loading: cheap after the first run (probe, facts and verdicts are cached).
    ``measured``: use what `autoglm tune` measured for this model here, when it has."""
    overrides = overrides or Overrides()
    overrides.validate()
    model = resolve(ref, progress=progress, install=install)
    if model.manifest is None:
        _check_file(model)
    device = native.probe_device()
    variant = None
    if measured and not overrides.safe:  # a faster quant of it that passed the quality gate here
        model, variant = _measured_variant(model, device)
    verdict = None if overrides.safe else selftest.check(device, model.path, model.facts.quant)
    plan = make_plan(model.facts, device, verdict, overrides)
    gpu_verdict = None
    if plan.gpu_layers > 0:  # the first CUDA/Vulkan/Metal load happens in a child: a broken one falls back to the CPU
        gpu_verdict = selftest.check_gpu(device, model.path, model.facts.quant)
        if not gpu_verdict.ok:
            plan = make_plan(model.facts, device, verdict, overrides, gpu_verdict)
    tuned = (tuning_cache.lookup(device, tuning_cache.model_key(model), plan.gpu_layers)
             if measured and not overrides.safe else None)
    if tuned is not None:
        plan = make_plan(model.facts, device, verdict, overrides, gpu_verdict, tuned)
    if variant:
        plan.reasons["model"] = variant
    return Prepared(model, device, verdict, plan, gpu_verdict, tuned)


def _check_file(model: ResolvedModel) -> None:
    """A file used in place loads first in a child (once per file version): nothing an install
    would have refused reaches llama.cpp in this process."""
    verdict = selftest.file_check(model.path)
    if not verdict.ok:
        why = verdict.detail.partition(": ")[2] if verdict.outcome == "failed" else verdict.summary()
        raise InvalidModelError(f"{model.path}: llama.cpp cannot load it ({why})")


def _measured_variant(model: ResolvedModel, device: hardware.DeviceFacts) -> tuple[ResolvedModel, str | None]:
    choice = tuning_cache.lookup_variant(device, tuning_cache.model_key(model))
    if choice is None or model.manifest is None or choice["name"] == model.manifest.name:
        return model, choice["reason"] if choice else None
    try:
        return resolve(choice["name"], install=False), choice["reason"]
    except ModelNotFoundError:  # the chosen version was deleted since: the original, as asked
        return model, None


def describe(prepared: Prepared) -> dict:
    """What `doctor` prints and the desktop app's device view shows: device, self-test, plan with reasons."""
    device = prepared.device
    return {"device": device.to_dict(), "amx": device.has("amx"),
            "model": {"label": prepared.model.label, **prepared.model.facts.to_dict(),
                      "integrity": integrity(prepared.model)},
            "selftest": prepared.verdict.__dict__ if prepared.verdict else None,
            "gpu_selftest": prepared.gpu_verdict.__dict__ if prepared.gpu_verdict else None,
            "plan": prepared.plan.to_dict(), "determinism": determinism(prepared.plan),
            "tuned": prepared.tuned.to_dict() if prepared.tuned else None,
            "onnx": {p: dict(zip(("provider", "reason"), onnx_provider(device, p), strict=True))
                     for p in ("int8", "fp32")}}


def integrity(model: ResolvedModel) -> str:
    """What was checked of the bytes about to load: a load re-hashes a file only when its size or
    modification time changed, so bit rot that keeps both goes unseen until `models verify`."""
    if model.manifest is None:
        return "a file used in place: loaded once in a child when first seen; no sha256 on record"
    if model.manifest.bundled is not None:
        return "shipped inside this app: sizes checked at each load"
    return ("sha256 checked at install; at each load only size and modification time are compared with that "
            f"check (a changed file is hashed again). `autoglm models verify {model.manifest.name}` re-hashes it")


def determinism(plan: Plan) -> str:
    """What holds for temperature-0 text on this plan (measured: CPU, and an H100)."""
    if plan.gpu_layers > 0:
        return ("GPU: temperature-0 text may differ with batching and prefix reuse (other kernel shapes sum "
                "in another order); answers stay correct, exact text is not reproducible")
    return ("CPU: a decode step does the same arithmetic for a stream alone or batched, but llama.cpp's attention "
            "takes other kernels for 64+ prompt tokens in one step and for one sequence past 512 tokens, so a "
            "prompt evaluated in other pieces (prefix reuse, a shared step) can tip a near-tie: answers stay "
            "correct, exact temperature-0 text is not guaranteed")


def load_draft(prepared: Prepared, target: LlamaBackend, ref: str, parallel: int, ctx_per_seq: int,
               n_batch: int) -> ModelDrafter:
    """The ``--draft`` model in its own context beside the target, with the target's threads and
    device (all on the GPU when the target is), after checking that its tokens mean the same."""
    plan = prepared.plan
    model = resolve(ref, install=False)
    if model.manifest is None:
        _check_file(model)
    extra = plan.use_extra_bufts and selftest.check(prepared.device, model.path, model.facts.quant).ok
    backend = LlamaBackend(str(model.path), threads=plan.threads, gpu_layers=-1 if plan.gpu_layers else 0,
                           use_extra_bufts=extra, use_mmap=True)
    check_vocab(target, backend, prepared.model.label, model.label)
    executor = LlamaExecutor(backend.model, n_seq=parallel, ctx_per_seq=ctx_per_seq, n_batch=n_batch,
                             threads=plan.threads, threads_batch=plan.threads_batch, flash_attn=plan.flash_attn,
                             offload_kqv=plan.gpu_layers > 0)
    return ModelDrafter(executor, keep=backend)


def load_scheduled(prepared: Prepared, parallel: int = 1, ctx_per_seq: int | None = None,
                   max_queue: int = 64, speculative: bool = True, draft: str | None = None) -> ScheduledBackend:
    """The planned model behind the continuous-batching scheduler: the one generation path."""
    plan = prepared.plan
    backend = LlamaBackend(plan.model_path, threads=plan.threads, gpu_layers=plan.gpu_layers,
                           use_extra_bufts=plan.use_extra_bufts, use_mmap=plan.use_mmap)
    n_batch = max(plan.n_batch, parallel + MIN_CHUNK)
    drafter = load_draft(prepared, backend, draft, parallel, ctx_per_seq or plan.n_ctx, n_batch) if draft else None

    def context(model: Any) -> LlamaExecutor:
        return LlamaExecutor(model, n_seq=parallel, ctx_per_seq=ctx_per_seq or plan.n_ctx, n_batch=n_batch,
                             threads=plan.threads, threads_batch=plan.threads_batch, flash_attn=plan.flash_attn,
                             offload_kqv=plan.gpu_layers > 0, kv_type=plan.kv_type, n_ubatch=plan.n_ubatch)

    split = plan.split_prompt
    if split:  # planned for plan.slots sequences: a server may run more (--parallel), each with its KV cells twice
        split, why = split_fits(prepared.model.facts, prepared.device, ctx_per_seq or plan.n_ctx, parallel,
                                plan.kv_type)
        if not split:
            plan.split_prompt, plan.reasons["split_prompt"] = False, f"off for {parallel} slots: {why}"
    executor: LlamaExecutor | SplitExecutor
    if not split:
        executor = context(backend.model)
    else:  # the same file again, not repacked, for prompt rows (SplitExecutor)
        plain = LlamaBackend(plan.model_path, threads=plan.threads, gpu_layers=0, use_extra_bufts=False,
                             use_mmap=plan.use_mmap)
        executor = SplitExecutor(context(plain.model), context(backend.model), keep=plain)
    scheduler = Scheduler(executor, parallel, ctx_per_seq or plan.n_ctx, max_queue, speculative=speculative,
                          draft=drafter)
    if plan.threads_adaptive:
        scheduler.adapt_threads((plan.threads, plan.threads_batch),
                                (plan.threads_busy, plan.threads_batch) if plan.threads_busy else None)
    return ScheduledBackend(backend, scheduler.start(), plan)
