"""Anthropic's Messages API ⇄ OpenAI chat completions, as pure converters.

Followed: https://docs.claude.com/en/api/messages (request, response, content blocks),
https://docs.claude.com/en/api/messages-streaming (event sequence and deltas),
https://docs.claude.com/en/api/errors (error shape and types), checked against the types of the
`anthropic` package. Stop sequences are matched here rather than in the engine, because engines
do not say which sequence stopped them (see `stops.py`).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ml_offload.errors import InvalidRequest, MloError
from ml_offload.wire.body import parse, require_object, require_str
from ml_offload.wire.sse import event as sse_event
from ml_offload.wire.stops import StopMatcher

Event = dict[str, Any]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    tools: list[Tool] | None = None
    tool_choice: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest):
    """`POST /v1/messages/count_tokens`: a Messages request without `max_tokens`."""

    max_tokens: int | None = Field(None, ge=1)  # type: ignore[assignment]


def parse_request(raw: bytes) -> MessagesRequest:
    return parse(MessagesRequest, raw)


def parse_count_request(raw: bytes) -> tuple[CountTokensRequest, dict[str, Any]]:
    """The typed request and the caller's body as it came (passed through to Anthropic)."""
    req = parse(CountTokensRequest, raw)
    return req, req.model_dump(exclude_unset=True)


def model_object(name: str, created_at: str) -> dict[str, Any]:
    """A model in Anthropic's `GET /v1/models` shape (https://docs.claude.com/en/api/models)."""
    return {"type": "model", "id": name, "display_name": name, "created_at": created_at}


def model_list(names: list[str], created_at: str) -> dict[str, Any]:
    data = [model_object(n, created_at) for n in names]
    first, last = (names[0], names[-1]) if names else (None, None)
    return {"data": data, "has_more": False, "first_id": first, "last_id": last}


# -- request: Anthropic → OpenAI -----------------------------------------------------------


def to_openai(req: MessagesRequest) -> dict[str, Any]:
    """The OpenAI chat request for `req`; stop sequences stay with the gateway (`stops.py`)."""
    out: dict[str, Any] = {
        "model": req.model,
        "messages": _messages(req),
        "max_tokens": req.max_tokens,
    }
    for key in ("temperature", "top_p", "top_k"):
        value = getattr(req, key)
        if value is not None:
            out[key] = value
    tools = [_tool(t) for t in req.tools or [] if not _is_server_tool(t)]
    if tools:
        out["tools"] = tools
    if req.tool_choice:
        out.update(_tool_choice(req.tool_choice))
    user = _metadata_user(req)
    if user is not None:
        out["user"] = user  # (anthropic_provider.py maps it back)
    return out


def _metadata_user(req: MessagesRequest) -> str | None:
    """`metadata.user_id`: who (and, for agents such as Claude Code, which session) asks."""
    metadata = (req.model_extra or {}).get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return user if isinstance(user, str) and user else None


def limits_view(req: MessagesRequest) -> dict[str, Any]:
    """The OpenAI reading of a request passed through untranslated, for the limits' estimate:
    `to_openai`'s, or the name and max_tokens alone for blocks it does not translate."""
    try:
        return to_openai(req)
    except InvalidRequest:
        return {"model": req.model, "max_tokens": req.max_tokens, "messages": []}


# Tools Anthropic runs on its own servers: a translated request cannot take them anywhere.
SERVER_TOOL_TYPES = ("web_search_", "web_fetch_", "code_execution_")


def _is_server_tool(tool: Tool) -> bool:
    kind = (tool.model_extra or {}).get("type")
    return isinstance(kind, str) and kind.startswith(SERVER_TOOL_TYPES)


def server_tools(req: MessagesRequest) -> list[str]:
    """The Anthropic server tools in `req` (left out by `to_openai`: say so to the caller)."""
    return [t.name for t in req.tools or [] if _is_server_tool(t)]


def _messages(req: MessagesRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = _system_text(req.system)
    if system:
        out.append({"role": "system", "content": system})
    for i, m in enumerate(req.messages):
        out.extend(_user(m.content, i) if m.role == "user" else [_assistant(m.content, i)])
    return out


def _system_text(system: str | list[dict[str, Any]] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    for i, block in enumerate(system):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest("system blocks must be text blocks", param=f"system.{i}")
    return "\n\n".join(block["text"] for block in system)


def _user(content: str | list[dict[str, Any]], i: int) -> list[dict[str, Any]]:
    """Tool results become `tool` messages, which OpenAI wants first; the rest one user turn."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type")
        if kind == "tool_result":
            tools.append(_tool_result(block, f"messages.{i}.content.{j}"))
        else:
            parts.append(_part(block, f"messages.{i}.content.{j}"))
    if parts:
        tools.append({"role": "user", "content": _joined(parts)})
    return tools


def _part(value: Any, where: str) -> dict[str, Any]:
    block = require_object(value, where)
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return {"type": "text", "text": block["text"]}
    if kind == "image" and isinstance(block.get("source"), dict):
        source = block["source"]
        if source.get("type") == "base64":
            media = require_str(source.get("media_type", "image/png"), f"{where}.source.media_type")
            url = f"data:{media};base64,{require_str(source.get('data'), f'{where}.source.data')}"
        elif source.get("type") == "url":
            url = require_str(source.get("url"), f"{where}.source.url")
        else:
            raise InvalidRequest("image source must be base64 or url", param=f"{where}.source")
        return {"type": "image_url", "image_url": {"url": url}}
    source = block.get("source")
    if kind == "document" and isinstance(source, dict) and source.get("type") == "text":
        return {"type": "text", "text": require_str(source.get("data"), f"{where}.source.data")}
    raise InvalidRequest(
        f"content block type {kind!r} is not supported here (use text, image or tool_result)",
        param=f"{where}.type",
    )


def _joined(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text when every part is text (what every chat template understands)."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    tool_id = block.get("tool_use_id")
    if not isinstance(tool_id, str):
        raise InvalidRequest("tool_result needs a tool_use_id", param=f"{where}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        content = _joined([_part(b, f"{where}.content.{k}") for k, b in enumerate(content)])
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content: must be a string or blocks", param=where)
    if block.get("is_error") and isinstance(content, str):
        content = f"Error: {content}"
    return {"role": "tool", "tool_call_id": tool_id, "content": content}


def _assistant(content: str | list[dict[str, Any]], i: int) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts, calls = [], []
    for j, block in enumerate(content):
        kind = block.get("type")
        where = f"messages.{i}.content.{j}"
        if kind == "text":
            texts.append(require_str(block.get("text"), f"{where}.text"))
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        elif kind not in ("thinking", "redacted_thinking"):
            raise InvalidRequest(
                f"assistant content block type {kind!r} is not supported (use text or tool_use)",
                param=f"messages.{i}.content.{j}.type",
            )
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    return {
        "id": require_str(block.get("id") or new_id("toolu_"), f"{where}.id"),
        "type": "function",
        "function": {
            "name": require_str(block.get("name"), f"{where}.name"),
            "arguments": orjson.dumps(
                require_object(block.get("input", {}), f"{where}.input")
            ).decode(),
        },
    }


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise InvalidRequest(
            "tool_choice.type must be auto, any, tool (with a name) or none", param="tool_choice"
        )
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


# -- response: OpenAI → Anthropic ----------------------------------------------------------

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def new_id(prefix: str = "msg_") -> str:
    return prefix + os.urandom(12).hex()


def stop_reason(finish_reason: str | None, used_tools: bool = False) -> str:
    if used_tools:
        return "tool_use"
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def usage(u: dict[str, Any] | None) -> dict[str, int]:
    u = u or {}
    return {
        "input_tokens": int(u.get("prompt_tokens") or 0),
        "output_tokens": int(u.get("completion_tokens") or 0),
    }


def parse_arguments(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as an object (Anthropic's `input` is always one)."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def from_openai(resp: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Message from an OpenAI chat completion."""
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_id("toolu_"),
                "name": function.get("name", ""),
                "input": parse_arguments(function.get("arguments") or ""),
            }
        )
    calls = bool(message.get("tool_calls"))
    return _message(
        model,
        content or [{"type": "text", "text": ""}],
        stop_reason(choice.get("finish_reason"), calls),
        None,
        usage(resp.get("usage")),
    )


def _message(
    model: str,
    content: list[dict[str, Any]],
    reason: str | None,
    stop_sequence: str | None,
    use: dict[str, int],
    msg_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": msg_id or new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": stop_sequence,
        "usage": use,
    }


class StreamTranslator:
    """OpenAI chat chunks in, Anthropic stream events out.

    `feed(chunk, prompt_tokens)` gives the events for one chunk, led by message_start once the
    prompt's token count is known or the first content comes (Anthropic announces
    `input_tokens` there); `finish()` closes the open block and gives message_delta and
    message_stop. When a stop sequence is reached, `stopped` turns true and the caller should
    stop reading the engine.
    """

    def __init__(self, model: str, stop_sequences: list[str] | None = None) -> None:
        self.model = model
        self.id = new_id()
        self.stopped = False
        self._stops = StopMatcher(stop_sequences)
        self._index = -1  # the open block's index, -1 before the first
        self._open: str | None = None  # "text" or "tool_use"
        self._tools: dict[int, int] = {}  # OpenAI tool call index → our block index
        self._finish: str | None = None
        self._stop_sequence: str | None = None
        self._usage: dict[str, Any] | None = None
        self._pieces = 0  # chunks with content: the output tokens when usage never comes
        self._started = False

    def _start(self, prompt_tokens: int | None) -> list[Event]:
        self._started = True
        use = usage(None)
        use["input_tokens"] = prompt_tokens or 0
        message = _message(self.model, [], None, None, use, self.id)
        return [{"type": "message_start", "message": message}]

    def feed(self, chunk: dict[str, Any], prompt_tokens: int | None = None) -> list[Event]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
            prompt_tokens = prompt_tokens or usage(self._usage)["input_tokens"]
        events: list[Event] = []
        if not self._started and (prompt_tokens is not None or _has_output(chunk)):
            events += self._start(prompt_tokens)
        for choice in chunk.get("choices") or []:
            if self.stopped:
                break
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self._pieces += 1
                self._text(delta["content"], events)
            for call in delta.get("tool_calls") or []:
                self._pieces += 1
                self._tool(call, events)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if not self._started:
            events += self._start(usage(self._usage)["input_tokens"])
        held = self._stops.flush()
        if held:
            self._emit_text(held, events)
        if self._index < 0:  # nothing was generated: one empty text block, as Anthropic does
            self._emit_text("", events)
        self._close(events)
        reason = (
            "stop_sequence" if self._stop_sequence else stop_reason(self._finish, bool(self._tools))
        )
        use = usage(self._usage)
        if self._usage is None:
            use["output_tokens"] = self._pieces
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": self._stop_sequence},
                "usage": use,
            }
        )
        events.append({"type": "message_stop"})
        return events

    def _text(self, text: str, events: list[Event]) -> None:
        emit, hit = self._stops.feed(text)
        if emit:
            self._emit_text(emit, events)
        if hit is not None:
            self._stop_sequence, self.stopped = hit, True

    def _emit_text(self, text: str, events: list[Event]) -> None:
        if self._open != "text":
            self._begin({"type": "text", "text": ""}, events)
        if text:
            delta = {"type": "text_delta", "text": text}
            events.append({"type": "content_block_delta", "index": self._index, "delta": delta})

    def _tool(self, call: dict[str, Any], events: list[Event]) -> None:
        n = int(call.get("index") or 0)
        function = call.get("function") or {}
        if n not in self._tools:
            held = self._stops.flush()
            if held:
                self._emit_text(held, events)
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or new_id("toolu_"),
                "name": function.get("name") or "",
                "input": {},
            }
            self._begin(block, events)
            self._tools[n] = self._index
        fragment = function.get("arguments")
        if fragment:
            delta = {"type": "input_json_delta", "partial_json": fragment}
            events.append({"type": "content_block_delta", "index": self._tools[n], "delta": delta})

    def _begin(self, block: dict[str, Any], events: list[Event]) -> None:
        self._close(events)
        self._index += 1
        self._open = block["type"]
        events.append({"type": "content_block_start", "index": self._index, "content_block": block})
        if self._index == 0:
            events.append({"type": "ping"})

    def _close(self, events: list[Event]) -> None:
        if self._open is not None:
            events.append({"type": "content_block_stop", "index": self._index})
            self._open = None


def _has_output(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
            return True
    return False


def fold(events: list[Event]) -> dict[str, Any]:
    """The Message a list of stream events describes (non-streaming requests that stream)."""
    message: dict[str, Any] = {}
    blocks: list[dict[str, Any]] = []
    partial: dict[int, list[str]] = {}
    for ev in events:
        kind = ev["type"]
        if kind == "message_start":
            message = dict(ev["message"])
        elif kind == "content_block_start":
            blocks.append(dict(ev["content_block"]))
        elif kind == "content_block_delta":
            delta = ev["delta"]
            if delta["type"] == "text_delta":
                blocks[ev["index"]]["text"] += delta["text"]
            else:
                partial.setdefault(ev["index"], []).append(delta["partial_json"])
        elif kind == "message_delta":
            message.update(ev["delta"])
            message["usage"] = ev["usage"]
    for index, pieces in partial.items():
        blocks[index]["input"] = parse_arguments("".join(pieces))
    message["content"] = blocks
    return message


def sse(event: Event) -> bytes:
    """One server-sent event in Anthropic's framing: `event: <type>` then `data: <json>`."""
    return sse_event(event, event["type"])


# -- errors --------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(exc: MloError) -> dict[str, Any]:
    """Anthropic's shape: {"type": "error", "error": {"type", "message"}}."""
    return {"type": "error", "error": {"type": error_type(exc.status), "message": exc.message}}
