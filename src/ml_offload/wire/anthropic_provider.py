"""Anthropic as a provider: OpenAI chat requests → Anthropic's Messages API, and its answers
(JSON and SSE events) → OpenAI chat completions and chunks. The other direction (Anthropic
clients in front of any model) is `anthropic.py`; the tool-argument parsing is shared.

Followed: https://docs.claude.com/en/api/messages (request: `system`, required `max_tokens`,
`stop_sequences`, `tools` with `input_schema`, `tool_choice` auto/any/tool/none; response
content blocks text/tool_use/thinking, `stop_reason`, `usage`), /en/api/messages-streaming
(message_start, content_block_start, content_block_delta with text_delta / input_json_delta /
thinking_delta, content_block_stop, message_delta with stop_reason and cumulative usage,
message_stop, ping, error) and /en/api/errors (`{"type": "error", "error": {"type", "message"}}`,
529 overloaded_error).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ml_offload.errors import EngineError, InvalidRequest
from ml_offload.wire.anthropic import parse_arguments

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI callers often leave it out

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


# -- request: OpenAI → Anthropic -----------------------------------------------------------


def messages_body(data: dict[str, Any], model: str) -> dict[str, Any]:
    """The `/v1/messages` body for an OpenAI chat request."""
    system, messages = _messages(data.get("messages") or [])
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": int(
            data.get("max_completion_tokens") or data.get("max_tokens") or DEFAULT_MAX_TOKENS
        ),
    }
    if system:
        out["system"] = system
    stop = data.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if data.get("temperature") is not None:
        out["temperature"] = min(1.0, float(data["temperature"]))  # Anthropic's range is 0..1
    for key in ("top_p", "top_k"):
        if data.get(key) is not None:
            out[key] = data[key]
    if data.get("tools"):
        out["tools"] = [_tool(t) for t in data["tools"]]
    choice = _tool_choice(data.get("tool_choice"), data.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    if isinstance(data.get("user"), str):
        out["metadata"] = {"user_id": data["user"]}
    if data.get("stream"):
        out["stream"] = True
    return out


def _messages(items: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """System text, and the turns with consecutive same-role turns merged (Anthropic wants
    them alternating; OpenAI's `tool` messages become one user turn of tool_result blocks)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(items):
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_text(m.get("content"), f"messages.{i}.content"))
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(m)]
        elif role == "assistant":
            blocks = _assistant_blocks(m, i)
        else:
            role, blocks = "user", _user_blocks(m.get("content"), i)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s), turns


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    raise InvalidRequest(f"{where}: must be a string or content parts", param=where)


def _user_blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content or ""}]
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url") or {}))
        else:
            raise InvalidRequest(
                f"content part type {kind!r} cannot be sent to Anthropic (use text or image_url)",
                param=f"messages.{i}.content.{j}.type",
            )
    return blocks


def _image(image: Any) -> dict[str, Any]:
    url = str(image.get("url") if isinstance(image, dict) else image or "")
    if url.startswith("data:") and ";base64," in url:
        media, _, payload = url[5:].partition(";base64,")
        source = {"type": "base64", "media_type": media, "data": payload}
    else:
        source = {"type": "url", "url": url}
    return {"type": "image", "source": source}


def _assistant_blocks(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text(m.get("content"), f"messages.{i}.content")
    if text:
        blocks.append({"type": "text", "text": text})
    for call in m.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{time.time_ns():x}",
                "name": function.get("name") or "",
                "input": parse_arguments(function.get("arguments") or ""),
            }
        )
    return blocks or [{"type": "text", "text": ""}]


def _tool_result(m: dict[str, Any]) -> dict[str, Any]:
    content = m.get("content")
    return {
        "type": "tool_result",
        "tool_use_id": str(m.get("tool_call_id") or ""),
        "content": content if isinstance(content, str) else _text(content, "content"),
    }


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    out = {
        "name": function.get("name") or "",
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None if parallel is not False else {"type": "auto"}
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest("tool_choice: auto, required, none or a function", param="tool_choice")
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# -- response: Anthropic → OpenAI ----------------------------------------------------------


def _usage(u: Any) -> dict[str, int]:
    u = u if isinstance(u, dict) else {}
    prompt = sum(
        int(u.get(k) or 0)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    completion = int(u.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _call(block: dict[str, Any], arguments: str) -> dict[str, Any]:
    return {
        "id": block.get("id") or "",
        "type": "function",
        "function": {"name": block.get("name") or "", "arguments": arguments},
    }


def chat_completion(resp: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion from an Anthropic Message."""
    texts, thinking, calls = [], [], []
    for block in resp.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking") or ""))
        elif kind == "tool_use":
            calls.append(_call(block, orjson.dumps(block.get("input") or {}).decode()))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return {
        "id": resp.get("id") or f"chatcmpl-{time.time_ns():x}",
        "created": int(time.time()),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": FINISH_REASONS.get(resp.get("stop_reason") or "", "stop"),
            }
        ],
        "usage": _usage(resp.get("usage")),
    }


class StreamTranslator:
    """Anthropic stream events in, OpenAI chat chunks out; `done` after message_stop.

    Tool calls keep OpenAI's streaming shape: the first chunk of a call has its index, id and
    name, each `input_json_delta` becomes an `arguments` fragment of the same index.
    """

    def __init__(self) -> None:
        self.id = f"chatcmpl-{time.time_ns():x}"
        self.created = int(time.time())
        self.done = False
        self._calls: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._input: dict[str, Any] = {}
        self._output: dict[str, Any] = {}

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = message.get("id") or self.id
            self._input = message.get("usage") or {}
            first = self._chunk({"role": "assistant", "content": ""})
            first["usage"] = _usage(self._input)  # the prompt's tokens, known from the start
            return [first]
        if kind == "content_block_start":
            return self._start(event)
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "message_delta":
            self._output = event.get("usage") or {}
            reason = (event.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, FINISH_REASONS.get(reason or "", "stop"))]
        if kind == "message_stop":
            self.done = True
            usage = _usage({**self._input, **self._output})
            return [{"id": self.id, "created": self.created, "choices": [], "usage": usage}]
        if kind == "error":
            error = event.get("error") or {}
            raise EngineError(
                f"Anthropic: {error.get('type', 'error')}: {error.get('message', '')}",
                upstream=True,
            )
        return []  # ping, content_block_stop, and event types added later

    def _start(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        block = event.get("content_block") or {}
        if block.get("type") == "tool_use":
            n = self._calls.setdefault(int(event.get("index") or 0), len(self._calls))
            call = {"index": n, **_call(block, "")}
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []

    def _delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text") or ""})]
        if kind == "input_json_delta":
            n = self._calls.get(int(event.get("index") or 0), 0)
            fragment = {"index": n, "function": {"arguments": delta.get("partial_json") or ""}}
            return [self._chunk({"tool_calls": [fragment]})]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": delta.get("thinking") or ""})]
        return []  # signature_delta and others: nothing for OpenAI clients

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": self.id, "created": self.created, "choices": [choice]}
