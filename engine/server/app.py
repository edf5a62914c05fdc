"""The OpenAI-compatible HTTP API over the scheduler (FastAPI).

Errors use OpenAI's JSON shape so the official client raises its usual exceptions; a bad request
never takes the server down. Requests carry no file system paths: models are store names.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from engine.backends.llamacpp import SamplingParams
from engine.errors import AutoGLMError, ContextOverflowError, InvalidArgumentError, ModelNotFoundError
from engine.models.progress import Progress
from engine.models.store import Manifest
from engine.scheduler import Event, QueueFullError, Scheduler
from engine.server.metrics import Metrics
from engine.tasks.chat import CHATML, render


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    cors_origins: list[str] = field(default_factory=list)
    retry_after_s: int = 1
    device_report: dict[str, Any] = field(default_factory=dict)  # loader.describe() of the served model


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Sampling(BaseModel):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    response_format: ResponseFormat | None = None


class CompletionRequest(Sampling):
    prompt: str


class EmbeddingRequest(BaseModel):
    model: str | None = None
    input: str | list[str]


class Example(BaseModel):
    text: str = Field(min_length=1)
    label: str = Field(min_length=1)


class TrainRequest(BaseModel):
    name: str
    examples: list[Example] | None = None
    labels: dict[str, str | None] | None = None  # zero-shot: label -> description
    budget: float = Field(default=1.0, ge=0, le=100)


class PullRequest(BaseModel):
    source: str = Field(min_length=3)


class QuantizeRequest(BaseModel):
    to: str = Field(min_length=2, max_length=12)


class ClassifyRequest(BaseModel):
    model: str | None = None  # a stored classifier
    input: str | list[str]
    labels: list[str] | None = None  # zero-shot instead
    exact: bool = False


def _grammar(fmt: ResponseFormat | None) -> str | None:
    if fmt is None or fmt.type == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if fmt.type == "json_object":
        return JSON_GBNF
    schema = fmt.json_schema.schema_ if fmt.json_schema else {}
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot express
        raise InvalidArgumentError(f"response_format json_schema is not supported: {exc}") from None


def _job_stream(job: Callable[[Progress, threading.Event], Manifest]) -> StreamingResponse:
    """Run a long model job on a thread; stream its progress as SSE (`{"label","done","total"}`),
    then `{"installed": {...}}` or `{"error": ...}`. A closed connection sets the job's cancel."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def send(item: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(events.put_nowait, item)

    def work() -> None:
        try:
            manifest = job(lambda label, done, total: send({"label": label, "done": done, "total": total}), cancel)
            send({"installed": {"name": manifest.name, "version": manifest.version}})
        except AutoGLMError as exc:
            send({"error": str(exc)})
        except Exception as exc:  # a bug, but the stream must still end with a reason
            send({"error": f"{type(exc).__name__}: {exc}"})

    threading.Thread(target=work, name="model-job", daemon=True).start()

    async def sse() -> AsyncIterator[str]:
        try:
            while True:
                item = await events.get()
                yield "data: " + json.dumps(item) + "\n\n"
                if "installed" in item or "error" in item:
                    return
        finally:
            cancel.set()  # no-op after the end; stops the job if the client went away

    return StreamingResponse(sse(), media_type="text/event-stream")


class Guard:
    """API key, body-size limit and request counting, as plain ASGI middleware: Starlette's
    ``@app.middleware("http")`` relays every streamed chunk through an extra task and memory
    stream, which on a 2-core board is CPU taken from llama.cpp's threads at every token."""

    def __init__(self, app: Any, config: ServerConfig, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = None
        if self.config.api_key and path != "/health":
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self.config.api_key.encode()):
                refusal = error(401, "invalid or missing API key (Authorization: Bearer <key>)",
                                "authentication_error", code="invalid_api_key")
        length = headers.get("content-length", "")
        if refusal is None and length.isdigit() and int(length) > self.config.max_body_bytes:
            refusal = error(413, f"request body over {self.config.max_body_bytes} bytes", code="body_too_large")
        if refusal is not None:
            self.metrics.requests.labels(path, str(refusal.status_code)).inc()
            return await refusal(scope, receive, send)
        status = [500]  # what an exception that escapes the app becomes

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.requests.labels(path, str(status[0])).inc()


def create_app(scheduler: Scheduler, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="Open-AutoGLM", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics(scheduler)
    backend = scheduler.backend
    template = backend.metadata.get("tokenizer.chat_template") or CHATML
    bos = backend.token_text(int(backend.metadata["tokenizer.ggml.bos_token_id"])) \
        if "tokenizer.ggml.bos_token_id" in backend.metadata else ""
    eos = backend.token_text(int(backend.metadata["tokenizer.ggml.eos_token_id"])) \
        if "tokenizer.ggml.eos_token_id" in backend.metadata else ""
    add_bos = backend.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"

    app.add_middleware(Guard, config=config, metrics=metrics)  # added first: inside CORS, so preflights pass
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        if first.get("type") == "json_invalid":
            return error(400, "the request body is not valid JSON", code="invalid_json")
        return error(400, f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}", param=".".join(loc) or None)

    @app.exception_handler(AutoGLMError)
    async def engine_error(_request: Request, exc: AutoGLMError) -> JSONResponse:
        status = 400 if isinstance(exc, InvalidArgumentError | ContextOverflowError) else (
            404 if isinstance(exc, ModelNotFoundError) else 422)
        return error(status, str(exc), code=type(exc).__name__)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        """A bug, not the client's fault: say what broke in the error shape clients read (the
        traceback goes to the log), instead of a bare 500."""
        return error(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    def params(body: Sampling, prompt_len: int) -> SamplingParams:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        room = scheduler.ctx_per_seq - prompt_len
        if room < 1:
            raise ContextOverflowError(f"the prompt is {prompt_len} tokens; a sequence holds {scheduler.ctx_per_seq}")
        return SamplingParams(max_tokens=min(body.max_tokens or room, room), temperature=body.temperature,
                              top_p=body.top_p, seed=body.seed, stop=stop)

    async def run(tokens: list[int], sampling: SamplingParams, grammar: str | None,
                  request: Request) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        req = scheduler.submit(tokens, sampling, grammar,
                               sink=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        started = time.perf_counter()
        first = True
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=1.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        req.cancel()
                    continue
                if first and event.text:
                    metrics.ttft.observe(time.perf_counter() - started)
                    first = False
                if event.done:
                    metrics.latency.observe(time.perf_counter() - started)
                yield event
                if event.done:
                    return
        finally:
            req.cancel()  # a client that went away (or an error) stops its generation

    def busy() -> JSONResponse:
        return error(429, "the server is at capacity; retry shortly", "rate_limit_error", code="queue_full",
                     headers={"Retry-After": str(config.retry_after_s)})

    async def respond(kind: str, body: Sampling, tokens: list[int], grammar: str | None, request: Request):
        sampling = params(body, len(tokens))
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = config.model_name
        try:
            stream = run(tokens, sampling, grammar, request)
            first = await stream.__anext__()  # submit now, so a full queue is a 429 before any byte is sent
        except QueueFullError:
            return busy()

        def chunk(text: str | None, finish: str | None) -> str:
            if kind == "chat":
                delta = {"content": text} if text is not None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish}
                obj = "text_completion"
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                          "choices": [choice]}) + "\n\n"

        def finish_reason(ev: Event) -> str:
            return "length" if ev.finish_reason == "length" else "stop"

        if body.stream:
            async def sse() -> AsyncIterator[str]:
                if kind == "chat":
                    yield ("data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                                  "model": model, "choices": [{"index": 0, "delta": {
                                                      "role": "assistant", "content": ""}, "finish_reason": None}]})
                           + "\n\n")
                ev = first
                try:
                    while True:
                        if ev.text:
                            yield chunk(ev.text, None)
                        if ev.done:
                            yield chunk(None, finish_reason(ev))
                            yield "data: [DONE]\n\n"
                            return
                        ev = await stream.__anext__()
                finally:
                    await stream.aclose()  # a disconnected client cancels its generation now

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        parts, ev = [first.text], first
        while not ev.done:
            ev = await stream.__anext__()
            parts.append(ev.text)
        if ev.error:
            return error(500, ev.error, "server_error")
        text = "".join(parts)
        completion_tokens = len(backend.tokenize(text, add_bos=False)) if text else 0
        usage = {"prompt_tokens": len(tokens), "completion_tokens": completion_tokens,
                 "total_tokens": len(tokens) + completion_tokens}
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": finish_reason(ev)}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason(ev), "logprobs": None}
            obj = "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.model_name, "active": scheduler.active,
                "queued": scheduler.queue_depth}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "local"}]}

    @app.get("/autoglm/models")
    async def installed_models() -> dict[str, Any]:
        """The store, for the desktop app's models view (not part of the OpenAI API), with the quants
        its quantize endpoint takes."""
        from engine.models import installed
        from engine.models.quantize import TARGETS

        keys = ("name", "version", "format", "quant", "size", "source")
        return {"data": [{k: getattr(m, k) for k in keys} for m in await asyncio.to_thread(installed)],
                "quantize_targets": list(TARGETS)}

    @app.post("/autoglm/models/pull")
    async def pull_model(body: PullRequest) -> StreamingResponse:
        """Progress as SSE (`{"label","done","total"}`), then `{"installed": ...}` or `{"error": ...}`.
        Closing the connection cancels the pull; nothing half-installed is left."""
        from engine.models import pull

        return _job_stream(lambda progress, cancel: pull(body.source, progress=progress, cancel=cancel))

    @app.post("/autoglm/models/{name}/quantize")
    async def quantize_model(name: str, body: QuantizeRequest) -> StreamingResponse:
        """llama.cpp's quantizer into a new model ``<name>-<quant>``, with per-tensor progress as SSE."""
        from engine.models.quantize import quantize

        return _job_stream(lambda progress, cancel: quantize(name, body.to, progress, cancel))

    @app.post("/autoglm/models/{name}/convert")
    async def convert_model(name: str) -> StreamingResponse:
        """A Hugging Face BERT folder into an ONNX encoder ``<name>-onnx``, with per-stage progress as SSE."""
        from engine.backends.onnx.convert import convert

        return _job_stream(lambda progress, cancel: convert(name, progress, cancel))

    @app.post("/autoglm/models/{name}/verify")
    async def verify_model(name: str) -> dict[str, Any]:
        from engine.models import store

        return {"name": name, "problems": await asyncio.to_thread(store.verify, store.require(name))}

    @app.post("/autoglm/models/{name}/rollback")
    async def rollback_model(name: str) -> dict[str, Any]:
        from engine.models import rollback

        old, new = rollback(name)
        return {"name": name, "from": old.version, "to": new.version}

    @app.delete("/autoglm/models/{name}")
    async def delete_model(name: str) -> dict[str, Any]:
        from engine.models import store

        if name == config.model_name:
            return error(400, f"{name} is the model this engine is serving; switch models first")
        store.remove(name)
        return {"removed": name}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        text = render(template, [m.model_dump() for m in body.messages], bos, eos)
        tokens = backend.tokenize(text, add_bos=add_bos and not (bos and text.startswith(bos)))
        return await respond("chat", body, tokens, _grammar(body.response_format), request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await respond("text", body, backend.tokenize(body.prompt, add_bos=True), None, request)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        from engine.tasks.embed import open_encoder

        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(isinstance(t, str) and t for t in texts):
            return error(400, "input must be a non-empty string or list of strings", param="input")
        manifest, encoder = await asyncio.to_thread(open_encoder, body.model)
        vectors, _ = await asyncio.to_thread(encoder.embed, texts)
        return {"object": "list", "model": manifest.name,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": 0, "total_tokens": 0}}

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        from engine.tasks.classify import open_classifier, zero_shot
        from engine.tasks.embed import open_encoder

        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            return error(400, "input must not be empty", param="input")

        def work():
            if body.labels:
                manifest, encoder = open_encoder(None)
                clf = zero_shot(encoder, manifest, dict.fromkeys(body.labels))
            elif body.model:
                clf, encoder = open_classifier(body.model)
            else:
                raise InvalidArgumentError("give model (a stored classifier) or labels (zero-shot)")
            return clf.classify(encoder, texts, exact=body.exact)

        preds, truncated = await asyncio.to_thread(work)
        return {"object": "list", "truncated": truncated,
                "data": [{"index": i, "label": p.label, "confidence": p.confidence, "exit_layer": p.exit_layer}
                         for i, p in enumerate(preds)]}

    @app.get("/autoglm/device")
    async def device() -> dict[str, Any]:
        """The hardware, the kernel self-test and the plan with its reasons, for the desktop app."""
        return {**config.device_report, "serving": {"parallel": scheduler.parallel, "ctx": scheduler.ctx_per_seq,
                                                         "flash_attn": True}}

    @app.post("/autoglm/classifiers")
    async def train_classifier(body: TrainRequest):
        """Train (examples) or save (zero-shot labels) a classifier into the store, for the desktop app."""
        from engine.tasks.classify import train, zero_shot
        from engine.tasks.embed import open_encoder

        if bool(body.examples) == bool(body.labels):
            return error(400, "give examples or labels, not both")

        def work():
            manifest, encoder = open_encoder(None)
            if body.labels:
                clf = zero_shot(encoder, manifest, body.labels)
            else:
                texts = [e.text for e in body.examples or []]
                labels = [e.label for e in body.examples or []]
                if len(set(labels)) < 2:
                    raise InvalidArgumentError("the examples need at least two labels")
                clf = train(encoder, manifest, texts, labels, budget=body.budget)
            installed = clf.install(body.name)
            return {"name": installed.name, "version": installed.version, "labels": clf.labels,
                    "report": clf.report}

        return await asyncio.to_thread(work)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    return app
