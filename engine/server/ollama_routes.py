"""Ollama's API (``/api/*``) beside OpenAI's, for the editors, libraries and tools that speak it:
chat, generate, embed, tags, show, ps, pull, version, with NDJSON streaming (on by default, as
Ollama's), ``format`` (``json`` or a JSON schema), ``options`` mapped to our sampling, and tools.

Thin adapters: prompts, tool calling and generation are the serving layer's (``replies.py``),
pulls are the model manager's job runner (``management.py``); only the wire shapes live here.
Errors are Ollama's ``{"error": "..."}`` (the app maps them for every ``/api/`` path). Pulling
is management: behind the management key, as ``/autoglm/models/pull`` is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from autoglm.engine.errors import InvalidArgumentError, QueueFullError
from autoglm.engine.models import store
from autoglm.engine.models.manager import installed, pull
from autoglm.engine.models.store import Manifest
from autoglm.engine.runtime import Runtime
from autoglm.engine.sampling import MAX_STOP_STRINGS, TEMPERATURE_MAX
from autoglm.engine.server.management import run_job
from autoglm.engine.server.protocol import JsonSchemaFormat, ResponseFormat, Text
from autoglm.engine.server.replies import Piece, Replier
from autoglm.engine.server.serving import Build, OpenAIServing
from autoglm.engine.tasks.tools import ToolCall

API_LEVEL = "0.9.0"  # the Ollama API these routes follow (clients check it before using newer fields)
NDJSON = "application/x-ndjson"
PINNED = "2318-01-01T00:00:00Z"  # what Ollama's /api/ps says of a model that is never unloaded


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Ollama's clients send fields we have no use for


class Options(Lenient):
    temperature: float | None = Field(default=None, ge=0, le=TEMPERATURE_MAX)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    num_predict: int | None = None  # -1 (or -2): as long as the context allows
    stop: list[Text] | None = Field(default=None, max_length=MAX_STOP_STRINGS)


class Function(Lenient):
    name: Text
    arguments: dict[str, Any] = Field(default_factory=dict)  # an object, not OpenAI's JSON text


class ToolCallIn(Lenient):
    function: Function


class Message(Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text = ""
    images: list[Any] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: Text | None = None

    def plain(self) -> dict[str, Any]:
        if self.images:
            raise InvalidArgumentError("images are not supported: the served models read text only")
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [{"type": "function", "function": c.function.model_dump()} for c in self.tool_calls]
        if self.tool_name:
            out["name"] = self.tool_name
        return out


Format = Literal["", "json"] | dict[str, Any] | None


class Generating(Lenient):
    model: Text
    format: Format = None
    options: Options = Field(default_factory=Options)
    stream: bool = True
    keep_alive: float | str | None = None  # accepted; one model stays loaded while this server runs


class ChatBody(Generating):
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateBody(Generating):
    prompt: Text = ""
    system: Text | None = None
    raw: bool = False
    images: list[Any] | None = None


class EmbedBody(Lenient):
    model: Text = ""
    input: Text | list[Text]
    truncate: bool = True


class NamedBody(Lenient):
    model: Text | None = None
    name: Text | None = None  # the older clients' field
    stream: bool = True

    @property
    def target(self) -> str:
        if not (self.model or self.name):
            raise InvalidArgumentError("model is required")
        return bare(self.model or self.name or "")


def bare(name: str) -> str:
    """``qwen2.5-coder-1.5b:latest`` is ``qwen2.5-coder-1.5b``: our models have one tag."""
    return name[:-7] if name.endswith(":latest") else name


def _format(value: Format) -> ResponseFormat | None:
    if not value:
        return None
    if value == "json":
        return ResponseFormat(type="json_object")
    if not isinstance(value, dict):
        raise InvalidArgumentError("format must be \"json\" or a JSON schema object")
    return ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(schema=value))


def _now() -> str:
    return _iso(time.time())


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat().replace("+00:00", "Z")


def _details(m: Manifest) -> dict[str, Any]:
    return {"parent_model": "", "format": m.format, "family": m.architecture, "families": [m.architecture],
            "parameter_size": "", "quantization_level": m.quant}


def _listed(m: Manifest) -> dict[str, Any]:
    return {"name": m.name, "model": m.name, "size": m.size, "digest": m.source_sha256 or "",
            "modified_at": _iso(m.installed_at),
            "details": _details(m)}


def ollama_router(serving: OpenAIServing) -> APIRouter:
    router = APIRouter(prefix="/api")
    runtime = serving.runtime

    @router.get("/version")
    async def version() -> dict[str, str]:
        return {"version": API_LEVEL}

    @router.get("/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [_listed(m) for m in await asyncio.to_thread(installed)]}

    @router.get("/ps")
    async def ps() -> dict[str, Any]:
        """The loaded models, their memory and when each unloads if left idle."""
        models = []
        for name, loaded, expires in serving.pool.loaded():
            manifest = await asyncio.to_thread(store.get, name)
            entry = _listed(manifest) if manifest else {"name": name, "model": name}
            held = loaded.runtime
            plan = held.model.plan if held.loaded else None
            models.append({**entry, "size": loaded.size, "active": loaded.active,
                           "expires_at": PINNED if expires == float("inf") else _iso(expires),
                           "context_length": held.scheduler.ctx_per_seq if held.loaded else 0,
                           "size_vram": loaded.size if plan and plan.gpu_layers else 0})
        return {"models": models}

    @router.post("/show")
    async def show(body: NamedBody) -> dict[str, Any]:
        name = body.target
        manifest = await asyncio.to_thread(store.require, name)
        serving_it = name == runtime.model_name
        meta = runtime.model.metadata if serving_it else {}
        capabilities = ["embedding"] if manifest.format == "onnx" else ["completion", "tools"]
        return {"modelfile": "", "parameters": "", "license": manifest.license or "",
                "template": meta.get("tokenizer.chat_template", ""), "details": _details(manifest),
                "model_info": {"general.architecture": manifest.architecture,
                               f"{manifest.architecture}.context_length": manifest.context_length},
                "capabilities": capabilities,
                "modified_at": _iso(manifest.installed_at)}

    async def load_only(body: Generating, field: str, empty: Any) -> dict[str, Any]:
        """Ollama's way to load a model ahead of use (or, with ``keep_alive: 0``, to unload it)."""
        name = serving.pool.name(bare(body.model))
        await serving.pool.release(await serving.pool.acquire(name, body.keep_alive))
        reason = "unload" if name not in serving.pool.models else "load"  # the server's first model stays
        return {"model": body.model, "created_at": _now(), field: empty, "done": True, "done_reason": reason}

    @router.post("/chat")
    async def chat(body: ChatBody, request: Request) -> Any:
        if not body.messages:
            return await load_only(body, "message", {"role": "assistant", "content": ""})
        build = serving.chat_builder([m.plain() for m in body.messages], body.tools, None, True, _format(body.format))
        return await _reply(body, build, request, chat=True)

    @router.post("/generate")
    async def generate(body: GenerateBody, request: Request) -> Any:
        if body.images:
            raise InvalidArgumentError("images are not supported: the served models read text only")
        if not body.prompt:
            return await load_only(body, "response", "")
        if body.raw:
            build = serving.text_builder(body.prompt, _format(body.format))
        else:
            messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
                {"role": "user", "content": body.prompt}]
            build = serving.chat_builder(messages, None, None, True, _format(body.format))
        return await _reply(body, build, request, chat=False)

    async def _reply(body: ChatBody | GenerateBody, build: Build, request: Request, chat: bool) -> Any:
        o = body.options
        limit = None if o.num_predict is None or o.num_predict < 0 else max(o.num_predict, 1)
        options: dict[str, Any] = {k: v for k, v in (("temperature", o.temperature), ("top_p", o.top_p),
                                                      ("seed", o.seed)) if v is not None}
        began = time.perf_counter_ns()
        try:
            started = await serving.start(
                bare(body.model), body.keep_alive, build,
                lambda runtime, n: runtime.sampling(n, limit, stop=list(o.stop or []), **options),
                request, body.stream)
        except QueueFullError as exc:
            return serving.at_capacity(exc)
        shape = Shape(body.model, chat, started.prompt_tokens, began, started.runtime)
        first, pieces = started.first, started.pieces
        if body.stream:
            return StreamingResponse(shape.lines(first, pieces), media_type=NDJSON)
        last = first
        async with aclosing(pieces):
            while not last.done:
                last = await pieces.__anext__()
        if last.error:
            raise last.error
        if last.cut:
            return JSONResponse({"error": last.cut}, status_code=503)
        return await shape.final(last, last.said)

    @router.post("/embed")
    async def embed(body: EmbedBody) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or not all(texts):
            raise InvalidArgumentError("input must be a non-empty string or list of non-empty strings")
        started = time.perf_counter_ns()
        done = await asyncio.to_thread(runtime.embed, texts, bare(body.model) or None)
        if done.truncated and not body.truncate:
            raise InvalidArgumentError(f"an input is longer than the model's {done.max_length} tokens "
                                       "(truncate: true cuts it)")
        return {"model": done.model, "embeddings": [v.tolist() for v in done.vectors],
                "total_duration": time.perf_counter_ns() - started, "load_duration": 0}

    @router.post("/pull")
    async def pull_model(body: NamedBody) -> Any:
        """Ollama's progress shape over the model manager's pull; closing the connection cancels it."""
        source = body.target
        items = await run_job(lambda progress, cancel: pull(source, progress=progress, cancel=cancel))

        async def lines() -> AsyncIterator[str]:
            yield json.dumps({"status": "pulling manifest"}) + "\n"
            async for item in items:
                if "error" in item:
                    yield json.dumps({"error": item["error"]}) + "\n"
                elif "installed" in item:
                    yield json.dumps({"status": "verifying sha256 digest"}) + "\n"
                    yield json.dumps({"status": "success"}) + "\n"
                else:
                    yield json.dumps({"status": f"pulling {item['label']}", "digest": item["label"],
                                      "total": item["total"], "completed": item["done"]}) + "\n"

        if body.stream:
            return StreamingResponse(lines(), media_type=NDJSON)
        last: dict[str, Any] = {}
        async for line in lines():
            last = json.loads(line)
        if "error" in last:
            raise InvalidArgumentError(last["error"])
        return last

    return router


class Shape:
    """One reply's NDJSON lines (chat's ``message`` or generate's ``response``) and its final
    counts, in Ollama's units (nanoseconds)."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int, started_ns: int, runtime: Runtime) -> None:
        self.model, self.chat, self.prompt_tokens, self.started = model, chat, prompt_tokens, started_ns
        self.runtime = runtime

    def line(self, text: str, calls: list[ToolCall] | None = None, done: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "created_at": _now()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = [{"function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                                         for c in calls]
            body["message"] = message
        else:
            body["response"] = text
        return {**body, "done": done}

    async def final(self, last: Piece, text: str) -> dict[str, Any]:
        total = time.perf_counter_ns() - self.started
        completion = await Replier.completion_tokens(self.runtime, last)
        return {**self.line(text, last.calls, done=True),
                "done_reason": "stop" if last.finish == "tool_calls" else last.finish,
                "total_duration": total, "load_duration": 0, "prompt_eval_count": self.prompt_tokens,
                "eval_count": completion}

    async def lines(self, first: Piece, pieces: AsyncGenerator[Piece, None]) -> AsyncIterator[str]:
        piece = first
        async with aclosing(pieces):  # a client gone cancels its generation
            while True:
                if piece.done:
                    if piece.error or piece.cut:
                        yield json.dumps({"error": str(piece.error) if piece.error else piece.cut}) + "\n"
                    else:
                        yield json.dumps(await self.final(piece, piece.text)) + "\n"
                    return
                if piece.text:
                    yield json.dumps(self.line(piece.text)) + "\n"
                piece = await pieces.__anext__()
