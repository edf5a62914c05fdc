"""Management endpoints (``/autoglm/*``, not part of the OpenAI API): the store's models and
their jobs (pull, quantize, convert with SSE progress; verify, roll back, delete), classifier
training, and the device report, for the desktop app. Store calls block, so they run in threads."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from autoglm.engine.backends.onnx.convert import convert
from autoglm.engine.errors import AutoGLMError
from autoglm.engine.fs import storage_error
from autoglm.engine.models import store
from autoglm.engine.models.catalog import catalog, measured, search_hub
from autoglm.engine.models.manager import installed, pull, rollback
from autoglm.engine.models.progress import Progress
from autoglm.engine.models.quantize import TARGETS, quantize
from autoglm.engine.models.store import Manifest
from autoglm.engine.router import routes
from autoglm.engine.runtime import Runtime
from autoglm.engine.server.protocol import error
from autoglm.engine.tasks.classify import parse_examples
from autoglm.engine.tasks.corrections import correct


class Example(BaseModel):
    text: str = Field(min_length=1)
    label: str = Field(min_length=1)


class ExamplesFile(BaseModel):
    """An examples file as the desktop app read it (the engine parses it: one parser for all)."""

    name: str = Field(min_length=1, max_length=255)
    content: str


class TrainRequest(BaseModel):
    name: str
    examples: list[Example] | None = None
    examples_file: ExamplesFile | None = None
    labels: dict[str, str | None] | None = None  # zero-shot: label -> description
    budget: float = Field(default=1.0, ge=0, le=100)


class CorrectionsRequest(BaseModel):
    corrections: list[Example] = Field(min_length=1, max_length=1000)


class PullRequest(BaseModel):
    source: str = Field(min_length=3)


class QuantizeRequest(BaseModel):
    to: str = Field(min_length=2, max_length=12)


SEARCHES = 2  # catalog searches at once, each on its own thread (they wait on a foreign server)
FIRST_EVENT_S = 5.0  # a job's own checks fail well within this: their error becomes the HTTP status


Job = Callable[[Progress, threading.Event], Manifest]
Send = Callable[[dict[str, Any]], None]


async def thread_stream(work: Callable[[Send, threading.Event], dict[str, Any]],
                        name: str = "job") -> AsyncIterator[dict[str, Any]]:
    """Run ``work(send, cancel)`` on a thread; its items: what it ``send``s, then what it returns
    (the last item), or ``{"error": ...}``. A mistake it finds at once (unknown model, bad quant,
    a bad collection name) raises here, before the first item, so the route answers it with an HTTP
    error status instead of a 200 stream. Closing the iterator (a client gone) sets ``cancel``."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def send(item: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(events.put_nowait, item)

    def run() -> None:
        try:
            send({**work(send, cancel), "last": True})
        except AutoGLMError as exc:
            send({"error": str(exc), "exc": exc, "last": True})
        except OSError as exc:
            refusal = storage_error(exc)
            send({"error": str(refusal), "exc": refusal, "last": True} if refusal
                 else {"error": f"{type(exc).__name__}: {exc}", "last": True})
        except Exception as exc:  # a bug, but the stream must still end with a reason
            send({"error": f"{type(exc).__name__}: {exc}", "last": True})

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        first: dict[str, Any] | None = await asyncio.wait_for(events.get(), FIRST_EVENT_S)
    except TimeoutError:
        first = None
    except asyncio.CancelledError:
        cancel.set()
        raise
    if first is not None and first.get("exc") is not None:
        raise first["exc"]  # the app's handler gives it its status (400, 404, 422, 507)

    async def items() -> AsyncIterator[dict[str, Any]]:
        item = first
        try:
            while True:
                if item is None:
                    item = await events.get()
                yield {k: v for k, v in item.items() if k not in ("exc", "last")}
                if item.get("last"):
                    return
                item = None
        finally:
            cancel.set()  # no-op after the end; stops the job if the client went away

    return items()


async def run_job(job: Job) -> AsyncIterator[dict[str, Any]]:
    """A long model job on a thread: progress ``{"label","done","total"}``, then ``{"installed":
    {...}}`` or ``{"error": ...}`` (``thread_stream`` says how errors and cancelling go)."""

    def work(send: Send, cancel: threading.Event) -> dict[str, Any]:
        manifest = job(lambda label, done, total: send({"label": label, "done": done, "total": total}), cancel)
        return {"installed": {"name": manifest.name, "version": manifest.version}}

    return await thread_stream(work, "model-job")


async def sse_of(items: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Items as SSE (the desktop app's and ``/autoglm``'s shape)."""

    async def sse() -> AsyncIterator[str]:
        async for item in items:
            yield "data: " + json.dumps(item) + "\n\n"

    return StreamingResponse(sse(), media_type="text/event-stream")


async def job_stream(job: Job) -> StreamingResponse:
    """A model job's items as SSE."""
    return await sse_of(await run_job(job))


def management_router(runtime: Runtime, loaded: Callable[[], set[str]] = set) -> APIRouter:
    """``loaded``: the names of the chat models the server holds now (none may be deleted)."""
    router = APIRouter(prefix="/autoglm")

    @router.get("/device")
    async def device() -> dict[str, Any]:
        """The hardware, the kernel self-test and the plan with its reasons, for the desktop app."""
        scheduler = runtime.scheduler
        report = dict(runtime.report)
        plan = report.get("plan")
        if isinstance(plan, dict) and plan.get("slots") not in (None, scheduler.parallel):
            # the engine was started with --parallel: show what serves, not the planner's default
            reasons = {**plan.get("reasons", {}), "slots": f"{scheduler.parallel}: set when this engine was started "
                       f"(--parallel; the planner's default here is {plan['slots']})"}
            report["plan"] = {**plan, "slots": scheduler.parallel, "reasons": reasons}
        return {**report, "serving": {"parallel": scheduler.parallel, "ctx": scheduler.ctx_per_seq,
                                              "flash_attn": bool(runtime.model.plan and runtime.model.plan.flash_attn),
                                              "onnx_threads": runtime.onnx_threads,
                                              "onnx_threads_reason": runtime.onnx_threads_reason}}

    @router.get("/models")
    async def models() -> dict[str, Any]:
        """The store, with the quants the quantize endpoint takes."""
        keys = ("name", "version", "format", "quant", "size", "source")

        def configured() -> dict[str, str]:
            try:
                return routes()
            except AutoGLMError:  # a broken config.toml: the CLI says why; the list still shows
                return {}

        return {"data": [{k: getattr(m, k) for k in keys} for m in await asyncio.to_thread(installed)],
                "quantize_targets": list(TARGETS), "routes": await asyncio.to_thread(configured)}

    @router.get("/catalog")
    async def model_catalog() -> dict[str, Any]:
        """Curated models with size, licence, fit and expected speed on this device (measured once)."""

        def work() -> dict[str, Any]:
            reference = runtime.speed_reference()  # the served model, measured once and remembered
            return {"data": catalog(runtime.device, measured(runtime.device) or [reference]),
                    "reference": asdict(reference)}

        return await asyncio.to_thread(work)

    searches = ThreadPoolExecutor(max_workers=SEARCHES, thread_name_prefix="autoglm-search")
    in_flight = [0]

    @router.get("/catalog/search")
    async def catalog_search(q: str = "") -> Any:
        """GGUF repos on Hugging Face (or HF_ENDPOINT's mirror); offline is one line. On threads of
        their own: eight slow searches on the shared pool held chat and embeddings for two minutes."""
        if in_flight[0] >= SEARCHES:
            return error(429, f"{SEARCHES} catalog searches are already running; try again shortly",
                         code="too_many_searches", headers={"Retry-After": "5"})
        in_flight[0] += 1
        try:
            return {"data": await asyncio.get_running_loop().run_in_executor(searches, search_hub, q)}
        finally:
            in_flight[0] -= 1

    @router.post("/models/pull")
    async def pull_model(body: PullRequest) -> StreamingResponse:
        """Closing the connection cancels the pull; nothing half-installed is left."""
        return await job_stream(lambda progress, cancel: pull(body.source, progress=progress, cancel=cancel))

    @router.post("/models/{name}/quantize")
    async def quantize_model(name: str, body: QuantizeRequest) -> StreamingResponse:
        """llama.cpp's quantizer into a new model ``<name>-<quant>``, with per-tensor progress."""
        return await job_stream(lambda progress, cancel: quantize(name, body.to, progress, cancel))

    @router.post("/models/{name}/convert")
    async def convert_model(name: str) -> StreamingResponse:
        """A Hugging Face BERT folder into an ONNX encoder ``<name>-onnx``, with per-stage progress."""
        return await job_stream(lambda progress, cancel: convert(name, progress, cancel))

    @router.post("/models/{name}/verify")
    async def verify_model(name: str) -> dict[str, Any]:
        problems = await asyncio.to_thread(lambda: store.verify(store.require(name)))
        return {"name": name, "problems": problems}

    @router.post("/models/{name}/rollback")
    async def rollback_model(name: str) -> dict[str, Any]:
        old, new = await asyncio.to_thread(rollback, name)
        return {"name": name, "from": old.version, "to": new.version}

    @router.delete("/models/{name}")
    async def delete_model(name: str) -> Any:
        if name == runtime.model_name or name in loaded():
            return error(400, f"{name} is loaded and serving; it can be deleted once it is unloaded "
                         "(keep_alive 0, or after its idle time)")
        await asyncio.to_thread(store.remove, name)
        return {"removed": name}

    @router.post("/classifiers")
    async def train_classifier(body: TrainRequest) -> Any:
        """Train (examples) or save (zero-shot labels) a classifier into the store."""
        given = [x for x in (body.examples, body.examples_file, body.labels) if x]
        if len(given) != 1:
            return error(400, "give one of examples, examples_file or labels")

        def work() -> dict[str, Any]:
            examples = None
            if body.examples_file:  # checked before the encoder is opened (or pulled and converted)
                examples = parse_examples(body.examples_file.content, body.examples_file.name)
            elif body.examples:
                examples = [e.text for e in body.examples], [e.label for e in body.examples]
            done = runtime.train_classifier(body.name, examples, labels=body.labels or None, budget=body.budget)
            return {"name": done.manifest.name, "version": done.manifest.version, "labels": done.classifier.labels,
                    "report": done.classifier.report}

        return await asyncio.to_thread(work)

    @router.post("/classifiers/{name}/corrections")
    async def correct_classifier(name: str, body: CorrectionsRequest) -> Any:
        """Labels a user fixed: kept with the classifier's examples; it retrains as a new version."""

        def work() -> dict[str, Any]:
            started = time.perf_counter()
            old = store.require(name)
            done = correct(name, [(c.text, c.label) for c in body.corrections], opener=runtime.encoder)
            return {"name": name, "from": old.version, "version": done.version,
                    "seconds": round(time.perf_counter() - started, 2)}

        return await asyncio.to_thread(work)

    return router
