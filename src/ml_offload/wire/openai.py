"""OpenAI wire format: request validation, response normalisation, error bodies.

The engine's answers are rewritten to OpenAI's published shapes: the requested model name,
no engine-only fields (llama.cpp adds `timings`), required fields present.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ml_offload.errors import MloError
from ml_offload.wire.body import load_object, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionDef(_Strict):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str = Field(min_length=1)


class ToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _Body(_Strict):
    """Every field OpenAI defines for generation, typed: what is forwarded is this model's dump
    (coerced values, never the raw body), so the engine sees only what was validated."""

    model: str = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=1)
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    user: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v: object) -> object:
        if v == [] or v == "":
            raise ValueError("input must not be empty")
        return v


Kind = Literal["chat", "completion", "embedding"]
_SCHEMAS: dict[Kind, type[BaseModel]] = {
    "chat": ChatRequest,
    "completion": CompletionRequest,
    "embedding": EmbeddingRequest,
}


def parse_request(kind: Kind, raw: bytes) -> tuple[BaseModel, dict[str, Any]]:
    """Validate a request body; return the typed view and what to forward: the view's own
    dump (coerced values, fields the client did not send left out), never the raw body."""
    req = validate(_SCHEMAS[kind], load_object(raw))
    return req, req.model_dump(exclude_unset=True)


# -- responses ---------------------------------------------------------------------------

_CHAT_KEYS = ("id", "object", "created", "model", "choices", "usage", "system_fingerprint")
_CHOICE_KEYS = ("index", "message", "finish_reason", "logprobs")
_DELTA_CHOICE_KEYS = ("index", "delta", "finish_reason", "logprobs")
_COMPLETION_CHOICE_KEYS = ("index", "text", "finish_reason", "logprobs")
_USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)


def _pick(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: d[k] for k in keys if k in d}


def _usage(u: Any) -> dict[str, Any] | None:
    return _pick(u, _USAGE_KEYS) if isinstance(u, dict) else None


def _envelope(d: dict[str, Any], obj: str, model: str) -> dict[str, Any]:
    out = _pick(d, _CHAT_KEYS)
    out["object"] = obj
    out["model"] = model
    out.setdefault("id", f"chatcmpl-{time.time_ns():x}")
    out.setdefault("created", int(time.time()))
    if "usage" in out:
        out["usage"] = _usage(out["usage"])
    return out


def normalize_chat(d: dict[str, Any], model: str) -> dict[str, Any]:
    out = _envelope(d, "chat.completion", model)
    choices = []
    for c in d.get("choices") or []:
        choice = _pick(c, _CHOICE_KEYS)
        choice.setdefault("logprobs", None)
        choice["finish_reason"] = choice.get("finish_reason") or "stop"
        choices.append(choice)
    out["choices"] = choices
    return out


def normalize_chunk(d: dict[str, Any], model: str) -> dict[str, Any]:
    out = _envelope(d, "chat.completion.chunk", model)
    out["choices"] = [_pick(c, _DELTA_CHOICE_KEYS) for c in d.get("choices") or []]
    return out


def normalize_completion(d: dict[str, Any], model: str) -> dict[str, Any]:
    out = _envelope(d, "text_completion", model)
    out["id"] = out["id"].replace("chatcmpl-", "cmpl-", 1)
    choices = []
    for c in d.get("choices") or []:
        choice = _pick(c, _COMPLETION_CHOICE_KEYS)
        choice.setdefault("logprobs", None)
        choice.setdefault("finish_reason", None)
        choices.append(choice)
    out["choices"] = choices
    return out


def normalize_embedding(d: dict[str, Any], model: str) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": e.get("index", i), "embedding": e.get("embedding", [])}
        for i, e in enumerate(d.get("data") or [])
    ]
    usage = d.get("usage") or {}
    prompt = int(usage.get("prompt_tokens", 0))
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": int(usage.get("total_tokens", prompt))},
    }


NORMALIZERS = {
    "chat": normalize_chat,
    "completion": normalize_completion,
    "embedding": normalize_embedding,
}
STREAM_NORMALIZERS = {"chat": normalize_chunk, "completion": normalize_completion}


# -- errors ------------------------------------------------------------------------------


def error_body(exc: MloError) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {
        "error": {
            "message": exc.message,
            "type": exc.error_type,
            "param": exc.param,
            "code": exc.code,
        }
    }


def engine_error_message(raw: bytes) -> str:
    """The engine's own message from its error body, or the raw text."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")[:500] or "no details"
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if err is None and isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])  # vLLM's `{"object": "error", "message", "type", "code"}`
    return str(err or data)[:500]


# llama.cpp's server answers some malformed requests with a 500 (its parser's exception caught
# as a server error): these markers say the request, not the engine, was at fault.
_REQUEST_FAULT_MARKERS = ("Failed to parse", "[json.exception.", "Unsupported param")


def is_request_fault(message: str) -> bool:
    """Whether an upstream 5xx message says the request itself failed validation upstream."""
    return any(marker in message for marker in _REQUEST_FAULT_MARKERS)


SESSION_FIELDS = ("prompt_cache_key", "user")  # the client's own conversation or user id
PREFIX = "prefix:"  # a session named by how its conversation begins


def session_of(data: dict[str, Any], header: str | None = None) -> str | None:
    """Which conversation a request belongs to, for routing it where its prompt cache is: the
    caller's `x-session-id` header (`header`), the client's own id (`prompt_cache_key`, `user`;
    Anthropic's `metadata.user_id` arrives as `user`), else a hash of how the conversation
    begins (the messages up to the first user message, or the prompt's first 512 characters):
    the same for every turn of it."""
    if header:
        return f"header:{header}"
    for key in SESSION_FIELDS:
        value = data.get(key)
        if isinstance(value, str) and value:
            return f"{key}:{value}"
    head = _opening_hash(data)
    return None if head is None else PREFIX + head


def conversation_key(data: dict[str, Any], header: str | None = None) -> str | None:
    """One conversation of a session (`session_of`): the session and how the conversation
    begins, so that one session's several conversations (an agent's subagents, a user's chats)
    are told apart. The same for every turn; None without a beginning."""
    session, head = session_of(data, header), _opening_hash(data)
    if session is None or head is None:
        return None
    return hashlib.blake2b(f"{session}\0{head}".encode(), digest_size=16).hexdigest()


def _opening_hash(data: dict[str, Any]) -> str | None:
    """A hash of how the conversation begins: the messages up to the first user message, or
    the prompt's first 512 characters."""
    messages, head = data.get("messages"), data.get("prompt")
    if isinstance(messages, list):
        end = next((i for i, m in enumerate(messages) if _is_user(m)), len(messages) - 1)
        head = messages[: end + 1]
    elif isinstance(head, str):
        head = head[:512]
    if not head:
        return None
    try:
        encoded = orjson.dumps(head)
    except TypeError:
        return None
    return hashlib.blake2b(encoded, digest_size=8).hexdigest()


def continues(data: dict[str, Any]) -> bool:
    """Whether the request carries an earlier answer (a later turn of a conversation)."""
    messages = data.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("role") in ("assistant", "tool") for m in messages
    )


def _is_user(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "user"
