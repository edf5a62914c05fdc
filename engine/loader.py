"""From what the user typed to a loaded backend: resolve, probe, self-test, plan, load.

The one path the CLI, the server and the GUI's engine child share, so a kernel that crashed in
its self-test can never be loaded in-process by any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import hardware, selftest
from engine.models import ResolvedModel, resolve
from engine.models.progress import Progress
from engine.planner import Overrides, Plan, make_plan

if TYPE_CHECKING:
    from engine.backends.llamacpp import LlamaBackend


@dataclass
class Prepared:
    model: ResolvedModel
    device: hardware.DeviceFacts
    verdict: selftest.Verdict | None
    plan: Plan


def prepare(ref: str | None, overrides: Overrides | None = None, progress: Progress | None = None,
            install: bool = True) -> Prepared:
    """Everything short of loading: cheap after the first run (probe, facts and verdicts are cached)."""
    overrides = overrides or Overrides()
    overrides.validate()
    model = resolve(ref, progress=progress, install=install)
    device = hardware.probe()
    verdict = None if overrides.safe else selftest.check(device, model.path, model.facts.quant)
    return Prepared(model, device, verdict, make_plan(model.facts, device, verdict, overrides))


def describe(prepared: Prepared) -> dict:
    """What `doctor` prints and the desktop app's device view shows: device, self-test, plan with reasons."""
    device = prepared.device
    return {"device": device.to_dict(), "amx": device.has("amx"),
            "model": {"label": prepared.model.label, **prepared.model.facts.to_dict()},
            "selftest": prepared.verdict.__dict__ if prepared.verdict else None, "plan": prepared.plan.to_dict()}


def load(prepared: Prepared) -> LlamaBackend:
    """Load the planned model (llama.cpp is imported here, not at start-up)."""
    from engine.backends.llamacpp import LlamaBackend

    return LlamaBackend(prepared.plan)


def load_scheduled(prepared: Prepared, parallel: int = 1, ctx_per_seq: int | None = None, max_queue: int = 64,
                   threads: int | None = None):
    """The model behind the continuous-batching scheduler. The scheduler owns the real context;
    llama-cpp-python's own one is kept tiny since it only serves tokenizing."""
    import dataclasses

    from engine.backends.llamacpp import LlamaBackend
    from engine.scheduler.batch import Scheduler
    from engine.scheduler.session import ScheduledBackend

    backend = LlamaBackend(dataclasses.replace(prepared.plan, n_ctx=64))
    scheduler = Scheduler(backend, parallel, ctx_per_seq or prepared.plan.n_ctx, max_queue, threads)
    return ScheduledBackend(backend, scheduler)
