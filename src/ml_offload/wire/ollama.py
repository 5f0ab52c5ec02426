"""Ollama's API ⇄ OpenAI chat completions, as pure converters.

Followed: https://github.com/ollama/ollama/blob/main/docs/api.md (`/api/chat`, `/api/generate`,
`/api/embed`, `/api/embeddings`, `/api/tags`, `/api/ps`, `/api/show`, `/api/version`; NDJSON
streaming, `done`/`done_reason`, counts, durations in nanoseconds), checked against the types of
the `ollama` package. Ollama sends a tool call whole, with its arguments as an object, so
streamed fragments are gathered here until the call is complete.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ml_offload.domain import ModelSpec, ModelStatus
from ml_offload.errors import InvalidRequest, MloError
from ml_offload.wire.body import load_object, parse, validate
from ml_offload.wire.openai import ToolDef

API_VERSION = "0.9.0"  # the Ollama API level these routes follow, for clients that check it
_NDJSON = b"\n"


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    function: ToolFunction


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None


class Options(BaseModel):
    """The options forwarded to the engine, typed: what is sent is the validated value."""

    model_config = ConfigDict(extra="allow")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = Field(None, ge=0)
    repeat_last_n: int | None = Field(None, ge=-1)
    num_predict: int | None = None


class _Generation(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: float | str | None = None


class ChatRequest(_Generation):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[ToolDef] | None = None


class GenerateRequest(_Generation):
    prompt: str = ""
    system: str | None = None
    suffix: str | None = None
    images: list[str] | None = None
    raw: bool = False


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    input: str | list[str] = Field(min_length=1)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1)


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


def parse_copy(raw: bytes) -> CopyRequest:
    return parse(CopyRequest, raw)


def parse_chat(raw: bytes) -> ChatRequest:
    return parse(ChatRequest, raw)


def parse_generate(raw: bytes) -> GenerateRequest:
    return parse(GenerateRequest, raw)


def parse_embed(raw: bytes) -> EmbedRequest:
    return parse(EmbedRequest, raw)


def parse_embeddings(raw: bytes) -> EmbeddingsRequest:
    return parse(EmbeddingsRequest, raw)


def parse_show(raw: bytes) -> ShowRequest:
    data = load_object(raw)
    if "model" not in data and "name" in data:
        data["model"] = data["name"]  # the field's older name
    return validate(ShowRequest, data)


def model_names(name: str) -> tuple[str, ...]:
    """Names to look `name` up by: as given, then without Ollama's default `:latest` tag."""
    return (name, name[: -len(":latest")]) if name.endswith(":latest") else (name,)


def is_unload(keep_alive: float | str | None) -> bool:
    return keep_alive in (0, "0", "0s", "0m")


# -- requests: Ollama → OpenAI --------------------------------------------------------------


def chat_to_openai(req: ChatRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"model": req.model, "messages": _messages(req.messages)}
    if req.tools:
        out["tools"] = [t.model_dump(exclude_unset=True) for t in req.tools]
    _common(req, out)
    return out


def generate_to_openai(
    req: GenerateRequest,
) -> tuple[Literal["chat", "completion"], dict[str, Any]]:
    """`raw` prompts go to text completion as they are; others through the chat template."""
    if req.suffix:
        raise InvalidRequest("suffix (fill-in-the-middle) is not supported", param="suffix")
    out: dict[str, Any] = {"model": req.model}
    _common(req, out)
    if req.raw:
        out["prompt"] = req.prompt
        return "completion", out
    messages = [OllamaMessage(role="user", content=req.prompt, images=req.images)]
    if req.system:
        messages.insert(0, OllamaMessage(role="system", content=req.system))
    out["messages"] = _messages(messages)
    return "chat", out


def _messages(messages: list[OllamaMessage]) -> list[dict[str, Any]]:
    """OpenAI messages; tool calls get ids so each tool answer can name the call it answers."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of calls not yet answered
    for i, m in enumerate(messages):
        msg: dict[str, Any] = {"role": m.role, "content": _content(m)}
        if m.role == "assistant" and m.tool_calls:
            msg["tool_calls"] = calls = [
                _call(c, f"call_{i}_{k}") for k, c in enumerate(m.tool_calls)
            ]
            pending = [(c["id"], c["function"]["name"]) for c in calls]
        elif m.role == "tool":
            msg["tool_call_id"] = _answered(pending, m.tool_name)
        out.append(msg)
    return out


def _content(m: OllamaMessage) -> str | list[dict[str, Any]]:
    if not m.images:
        return m.content
    parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}]
    for image in m.images:
        parts.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}})
    return parts


def _call(call: ToolCall, call_id: str) -> dict[str, Any]:
    arguments = call.function.arguments
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    return {
        "id": call.id or call_id,
        "type": "function",
        "function": {"name": call.function.name, "arguments": arguments},
    }


def _answered(pending: list[tuple[str, str]], name: str | None) -> str:
    for k, (call_id, call_name) in enumerate(pending):
        if name is None or call_name == name:
            del pending[k]
            return call_id
    return "call_unmatched"


_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
}


def _common(req: _Generation, out: dict[str, Any]) -> None:
    options = req.options.model_dump(exclude_none=True) if req.options else {}
    for ours, theirs in _OPTIONS.items():
        if ours in options:
            out[theirs] = options[ours]
    num_predict = options.get("num_predict")
    if num_predict is not None and num_predict > 0:
        out["max_tokens"] = num_predict
    if req.format == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(req.format, dict):
        schema = {"name": "schema", "schema": req.format}
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif req.format:
        raise InvalidRequest('format must be "json" or a JSON schema', param="format")


# -- responses: OpenAI → Ollama --------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    def ollama(self) -> dict[str, Any]:
        text = "".join(self.arguments).strip()
        try:
            args = orjson.loads(text) if text else {}
        except orjson.JSONDecodeError:
            args = {"arguments": text}
        return {"function": {"name": self.name, "arguments": args}}


class StreamTranslator:
    """OpenAI chunks in, Ollama stream objects out (`/api/chat` or `/api/generate`).

    Times are taken from `clock` (nanoseconds): `started_ns` when the request came,
    `opened()` when the engine answered (the wait and any model load before it is
    `load_duration`), the first token ends `prompt_eval_duration`, the last `eval_duration`.
    """

    def __init__(
        self,
        kind: Literal["chat", "generate"],
        model: str,
        started_ns: int,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.kind, self.model = kind, model
        self._clock = clock
        self._started = self._opened = started_ns
        self._first: int | None = None
        self._calls: dict[int, _Call] = {}
        self._finish: str | None = None
        self._usage: dict[str, Any] = {}
        self._pieces = 0

    def opened(self) -> None:
        self._opened = self._clock()

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") if "delta" in choice else choice.get("text")
            if text:
                self._mark()
                out.append(self._piece(text))
            for call in delta.get("tool_calls") or []:
                self._mark()
                self._gather(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def finish(self) -> list[dict[str, Any]]:
        out = []
        if self._calls:
            piece = self._piece("")
            piece["message"]["tool_calls"] = [c.ollama() for c in self._calls.values()]
            out.append(piece)
        end = self._clock()
        first = self._first or end
        final = self._piece("")
        final.update(
            done=True,
            done_reason="length" if self._finish == "length" else "stop",
            total_duration=end - self._started,
            load_duration=self._opened - self._started,
            prompt_eval_count=int(self._usage.get("prompt_tokens") or 0),
            prompt_eval_duration=max(0, first - self._opened),
            eval_count=int(self._usage.get("completion_tokens") or self._pieces),
            eval_duration=end - first,
        )
        out.append(final)
        return out

    def _mark(self) -> None:
        self._pieces += 1
        if self._first is None:
            self._first = self._clock()

    def _piece(self, text: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.kind == "chat":
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = False
        return out

    def _gather(self, call: dict[str, Any]) -> None:
        n = int(call.get("index") or 0)
        function = call.get("function") or {}
        if n not in self._calls:
            self._calls[n] = _Call(call.get("id") or f"call_{n}", function.get("name") or "")
        elif function.get("name") and not self._calls[n].name:
            self._calls[n].name = function["name"]
        if function.get("arguments"):
            self._calls[n].arguments.append(function["arguments"])


def fold(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """One response object from a stream of them (`"stream": false`)."""
    final = dict(objects[-1])
    if "message" in final:
        calls = [c for o in objects for c in o["message"].get("tool_calls") or []]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(o["message"]["content"] for o in objects),
        }
        if calls:
            message["tool_calls"] = calls
        final["message"] = message
    else:
        final["response"] = "".join(o["response"] for o in objects)
    return final


def ndjson(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + _NDJSON


def embed(resp: dict[str, Any], model: str, total_ns: int) -> dict[str, Any]:
    return {
        "model": model,
        "embeddings": [d["embedding"] for d in resp.get("data") or []],
        "total_duration": total_ns,
        "load_duration": 0,
        "prompt_eval_count": int((resp.get("usage") or {}).get("prompt_tokens") or 0),
    }


def load_response(model: str, reason: Literal["load", "unload"], kind: str) -> dict[str, Any]:
    """What `/api/chat` and `/api/generate` answer to a request with nothing to generate."""
    out: dict[str, Any] = {"model": model, "created_at": now_iso()}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out.update(done=True, done_reason=reason)
    return out


# -- models ------------------------------------------------------------------------------


def tag(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _size(spec: ModelSpec) -> int:
    if spec.info:
        return spec.info.file_size_bytes
    try:
        return spec.path.stat().st_size if spec.path else 0
    except OSError:
        return 0


def _modified(spec: ModelSpec, fallback_s: float) -> str:
    try:
        mtime = spec.path.stat().st_mtime if spec.path else fallback_s
    except OSError:
        mtime = fallback_s
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(spec: ModelSpec) -> str:
    return hashlib.sha256(f"{spec.name}\0{spec.path}\0{spec.url}".encode()).hexdigest()


def _parameter_size(n: int | None) -> str:
    if not n:
        return ""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}".rstrip("0").rstrip(".") + unit
    return str(n)


def details(spec: ModelSpec) -> dict[str, Any]:
    info = spec.info
    family = info.architecture if info else ""
    return {
        "parent_model": "",
        "format": "gguf" if spec.is_local else "",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": _parameter_size(info.parameters if info else None),
        "quantization_level": (info.quantization if info else None) or "",
    }


def tags(specs: list[ModelSpec], started_at_s: float) -> dict[str, Any]:
    """Every name a client may ask for: models and their aliases (copies made by /api/copy)."""
    models = []
    for spec, each in [(sp, n) for sp in specs for n in sp.names]:
        name = tag(each)
        models.append(
            {
                "name": name,
                "model": name,
                "modified_at": _modified(spec, started_at_s),
                "size": _size(spec),
                "digest": _digest(spec),
                "details": details(spec),
            }
        )
    return {"models": models}


def ps(loaded: list[tuple[ModelSpec, ModelStatus]]) -> dict[str, Any]:
    now = time.time()
    models = []
    for spec, status in loaded:
        name = tag(spec.name)
        entry: dict[str, Any] = {
            "name": name,
            "model": name,
            "size": status.estimate_bytes or _size(spec),
            "digest": _digest(spec),
            "details": details(spec),
            "size_vram": 0,
            "context_length": spec.ctx_size,
        }
        if spec.ttl_s > 0 and not status.pinned:
            left = max(0.0, spec.ttl_s - (status.idle_s or 0.0))
            entry["expires_at"] = datetime.fromtimestamp(now + left, UTC).isoformat()
        models.append(entry)
    return {"models": models}


def show(spec: ModelSpec, started_at_s: float, *, tools: bool) -> dict[str, Any]:
    """Ollama's model details; `tools`: the model is offered tools (`registry.offers_tools`)."""
    info = spec.info
    model_info: dict[str, Any] = {}
    if info:
        arch = info.architecture
        model_info = {
            "general.architecture": arch,
            "general.name": info.name,
            "general.parameter_count": info.parameters,
            f"{arch}.context_length": info.context_length,
            f"{arch}.block_count": info.block_count,
            f"{arch}.embedding_length": info.embedding_length,
            f"{arch}.attention.head_count": info.head_count,
            f"{arch}.attention.head_count_kv": info.head_count_kv,
        }
    capabilities = ["completion"] + (["tools"] if tools else [])
    capabilities += ["embedding"] if spec.embeddings else []
    source = str(spec.path) if spec.path else spec.url
    return {
        "modelfile": f"# served by ml-offload\nFROM {source}\nPARAMETER num_ctx {spec.ctx_size}\n",
        "parameters": f"num_ctx {spec.ctx_size}",
        "template": "",
        "details": details(spec),
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": _modified(spec, started_at_s),
    }


def error_body(exc: MloError) -> dict[str, Any]:
    """Ollama's shape: {"error": "message"}."""
    return {"error": exc.message}
