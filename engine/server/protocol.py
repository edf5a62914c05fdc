"""OpenAI's wire format as pydantic models: requests validated on the way in, responses and
stream chunks built from one definition each (never hand-written dicts). Sampling bounds and
defaults come from ``engine.sampling``, the source the CLI and the GUI also use."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field

from autoglm.engine.errors import (
    AutoGLMError,
    ContextOverflowError,
    DamagedModelError,
    InvalidArgumentError,
    ModelNotFoundError,
    QueueFullError,
    RequestTooCostlyError,
    SchedulerFailedError,
    StorageError,
)
from autoglm.engine.sampling import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, MAX_STOP_STRINGS, TEMPERATURE_MAX
from autoglm.engine.tasks.tools import MAX_TOOLS, ToolCall


# --- errors ------------------------------------------------------------------------------------
def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# The one map from the engine's typed errors to HTTP: (status, OpenAI error type, code); the first
# matching class wins, anything else a client sent that the engine refused is a 422.
_REFUSALS: list[tuple[type[AutoGLMError], int, str, str | None]] = [
    (QueueFullError, 429, "rate_limit_error", "queue_full"),
    (SchedulerFailedError, 503, "server_error", "engine_failed"),
    (StorageError, 507, "server_error", None),
    (DamagedModelError, 500, "server_error", "model_damaged"),  # the served model, not the request
    (InvalidArgumentError, 400, "invalid_request_error", None),
    (ContextOverflowError, 400, "invalid_request_error", None),
    (ModelNotFoundError, 404, "invalid_request_error", "model_not_found"),
    (RequestTooCostlyError, 422, "invalid_request_error", "request_too_costly"),
]


def _kind(exc: AutoGLMError) -> tuple[int, str, str]:
    status, kind, code = next(((s, k, c) for cls, s, k, c in _REFUSALS if isinstance(exc, cls)),
                              (422, "invalid_request_error", None))
    return status, kind, code or type(exc).__name__


def refusal(exc: AutoGLMError, retry_after_s: int = 1) -> JSONResponse:
    """An engine error as the HTTP answer every route gives it, raised or ended in-band (an event)."""
    status, kind, code = _kind(exc)
    headers = {"Retry-After": str(retry_after_s)} if status == 429 else None
    return error(status, str(exc), kind, param="model" if code == "model_not_found" else None, code=code,
                 headers=headers)


# --- requests ----------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """Lone surrogates ("\\ud800" in JSON) are valid JSON but not text: replace them, never a 500."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


Text = Annotated[str, BeforeValidator(_clean)]


class ContentPart(BaseModel):
    type: Literal["text"]
    text: Text


class FunctionCall(BaseModel):
    name: Text
    arguments: Text = "{}"  # JSON text, as OpenAI sends it


class ToolCallIn(BaseModel):
    id: Text | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """OpenAI's message: ``developer`` is today's name for ``system``; content may be a list of
    text parts. Other parts (images, audio) are refused with a clear error by the validation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None  # an assistant turn that only called tools has none
    tool_calls: list[ToolCallIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: Text | None = None
    name: Text | None = None

    def plain(self) -> dict[str, Any]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        out.update({k: v for k, v in (("tool_call_id", self.tool_call_id), ("name", self.name)) if v})
        return out


class JsonSchemaFormat(BaseModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


MAX_EXTRACT_INPUTS = 64  # a request holds the connection until all are done; more is a job for the CLI


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Sampling(BaseModel):
    model: Text | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=DEFAULT_TEMPERATURE, ge=0, le=TEMPERATURE_MAX)
    top_p: float = Field(default=DEFAULT_TOP_P, gt=0, le=1)
    seed: int | None = None
    stop: Text | list[Text] | None = Field(default=None, max_length=MAX_STOP_STRINGS)
    stream: bool = False
    ignore_eos: bool = False  # llama-server's extension: exactly max_tokens (benchmarks, tests)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None  # checked by tasks.tools (count, names, schema sizes)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True


class CompletionRequest(Sampling):
    prompt: Text


class EmbeddingRequest(BaseModel):
    model: Text | None = None
    input: Text | list[Text]


class RerankDocument(BaseModel):
    text: Text


class RerankRequest(BaseModel):
    """llama-server's and Jina's shape; documents as strings or ``{"text": ...}``."""

    model: Text | None = None  # an embed model; default: the router's
    query: Text
    documents: list[Text | RerankDocument]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ClassifyRequest(BaseModel):
    model: Text | None = None  # a stored classifier
    input: Text | list[Text]
    labels: list[Text] | None = None  # zero-shot instead
    exact: bool = False


class ExtractRequest(BaseModel):
    model: Text | None = None  # the served chat model ("default" or its name)
    input: Text | list[Text] = Field(max_length=MAX_EXTRACT_INPUTS)
    schema_: dict[str, Any] = Field(alias="schema")
    max_tokens: int = Field(default=512, ge=1, le=8192)


# --- responses ---------------------------------------------------------------------------------
class PromptDetails(BaseModel):
    cached_tokens: int = 0  # the prompt's tokens this replica's KV cache already held (a prefix seen before)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails = Field(default_factory=PromptDetails)


class FunctionOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    index: int | None = None  # in stream deltas only
    id: str
    type: Literal["function"] = "function"
    function: FunctionOut

    @classmethod
    def of(cls, call: ToolCall, index: int | None = None) -> ToolCallOut:
        return cls(index=index, id=call.id, function=FunctionOut(name=call.name, arguments=call.arguments))


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str | None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None


CompletionKind = Literal["chat.completion", "chat.completion.chunk", "text_completion"]


class Completion(BaseModel):
    """One response or stream chunk; ``object`` says which of OpenAI's four shapes it is."""

    id: str
    object: CompletionKind
    created: int
    model: str
    choices: list[ChatChoice] | list[ChunkChoice] | list[TextChoice]
    usage: Usage | None = None


class Reply:
    """The identity shared by every chunk of one response, and the four shapes built from it."""

    _MARK = "\u0000text\u0000"

    def __init__(self, kind: Literal["chat", "text"], model: str) -> None:
        self.kind, self.model = kind, model
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        # Token chunks differ only in their text: render the model's chunk once around a marker and
        # splice each token's JSON string in (a pydantic round per token is CPU the decode needs).
        self._head, self._tail = self._render(self._MARK, None).split(json.dumps(self._MARK))

    def _make(self, obj: CompletionKind, choices: list[Any], usage: Usage | None = None) -> Completion:
        return Completion(id=self.id, object=obj, created=self.created, model=self.model, choices=choices,
                          usage=usage)

    def chunk(self, text: str | None = None, finish: str | None = None, role: bool = False) -> str:
        """One SSE ``data:`` line of the stream (the first one of a chat announces the role)."""
        if text is not None and finish is None and not role:
            return self._head + json.dumps(text) + self._tail
        return self._render(text, finish, role)

    def calls(self, calls: list[ToolCall]) -> str:
        """The stream's chunk with the reply's tool calls, each whole (OpenAI's clients join
        argument pieces, and one piece is a valid sequence of pieces)."""
        delta = Delta(tool_calls=[ToolCallOut.of(c, i) for i, c in enumerate(calls)])
        body = self._make("chat.completion.chunk", [ChunkChoice(delta=delta)]).model_dump()
        body["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
        del body["usage"]
        return "data: " + json.dumps(body) + "\n\n"

    def _render(self, text: str | None, finish: str | None, role: bool = False) -> str:
        if self.kind == "chat":
            delta = Delta(role="assistant", content="") if role else Delta(content=text)
            body = self._make("chat.completion.chunk", [ChunkChoice(delta=delta, finish_reason=finish)]).model_dump()
            body["choices"][0]["delta"] = delta.model_dump(exclude_none=True)  # {} on the final chunk, as OpenAI
        else:
            body = self._make("text_completion", [TextChoice(text=text or "", finish_reason=finish)]).model_dump()
        del body["usage"]
        return "data: " + json.dumps(body) + "\n\n"

    def whole(self, text: str, finish: str, usage: Usage, calls: list[ToolCall] | None = None) -> dict[str, Any]:
        if self.kind == "chat":
            message = ChatMessageOut(content=text or (None if calls else ""),
                                     tool_calls=[ToolCallOut.of(c) for c in calls] if calls else None)
            choice: Any = ChatChoice(message=message, finish_reason=finish)
            body = self._make("chat.completion", [choice], usage).model_dump()
            body["choices"][0]["message"] = message.model_dump(exclude_none=True) | {"content": message.content}
            return body
        return self._make("text_completion", [TextChoice(text=text, finish_reason=finish)], usage).model_dump()


def sse_error(message: str, kind: str = "server_error", code: str | None = None) -> str:
    """An error inside an already-started stream, in the shape OpenAI's clients raise from."""
    return "data: " + json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}) + "\n\n"


def sse_refusal(exc: AutoGLMError) -> str:
    """An engine error that ends a stream: the type and code its HTTP answer would carry (``refusal``)."""
    _status, kind, code = _kind(exc)
    return sse_error(str(exc), kind, code)
