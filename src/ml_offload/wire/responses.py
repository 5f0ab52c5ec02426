"""OpenAI's Responses API ⇄ chat completions, as pure converters.

Followed: https://platform.openai.com/docs/api-reference/responses (create, the response
object, input items) and https://platform.openai.com/docs/api-reference/responses-streaming
(the event sequence), checked against the `openai` package's `types/responses/` and the
accumulator of its `responses.stream()` helper. Every event carries `sequence_number`; SSE
frames name the event (`event: response.output_text.delta`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ml_offload.errors import InvalidRequest, MloError
from ml_offload.wire.body import parse, require_object, require_str
from ml_offload.wire.sse import event as sse_event

Item = dict[str, Any]
Event = dict[str, Any]


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    input: str | list[Item]
    instructions: str | None = None
    tools: list[Item] | None = None
    tool_choice: str | Item | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    reasoning: Item | None = None
    text: Item | None = None
    metadata: dict[str, str] | None = None
    store: bool = True
    stream: bool = False
    previous_response_id: str | None = Field(None, min_length=1)
    user: str | None = None


def parse_request(raw: bytes) -> ResponsesRequest:
    return parse(ResponsesRequest, raw)


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


# -- input items -----------------------------------------------------------------------------


def input_items(req: ResponsesRequest) -> list[Item]:
    """The request's input as typed items, each with an id (as `input_items` lists them)."""
    if isinstance(req.input, str):
        return [_message("user", [{"type": "input_text", "text": req.input}])]
    if not req.input:
        raise InvalidRequest("input must not be empty", param="input")
    return [_item(value, f"input.{i}") for i, value in enumerate(req.input)]


def _message(role: str, content: list[Item], item_id: str | None = None) -> Item:
    return {
        "type": "message",
        "id": item_id or new_id("msg_"),
        "role": role,
        "content": content,
        "status": "completed",
    }


_ROLES = ("user", "system", "developer", "assistant")
_PART_TYPES = ("input_text", "output_text", "refusal", "input_image")


def _item(value: Any, where: str) -> Item:
    item = require_object(value, where)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise InvalidRequest(f"{where}.role must be one of {', '.join(_ROLES)}", param=where)
        content = item.get("content")
        text_type = "output_text" if role == "assistant" else "input_text"
        if isinstance(content, str):
            parts = [{"type": text_type, "text": content}]
        elif isinstance(content, list):
            parts = [_part(p, f"{where}.content.{j}") for j, p in enumerate(content)]
        else:
            raise InvalidRequest(
                f"{where}.content must be a string or a list of parts", param=where
            )
        return _message(role, parts, _id(item))
    if kind == "function_call":
        call = {
            k: require_str(item.get(k), f"{where}.{k}") for k in ("call_id", "name", "arguments")
        }
        return {"type": kind, "id": _id(item) or new_id("fc_"), **call, "status": "completed"}
    if kind == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str | list):
            raise InvalidRequest(f"{where}.output must be a string or parts", param=where)
        call_id = require_str(item.get("call_id"), f"{where}.call_id")
        item_id = _id(item) or new_id("fco_")
        return {"type": kind, "id": item_id, "call_id": call_id, "output": output}
    if kind == "reasoning":
        return item  # kept for the record; a chat backend gets nothing of it
    raise InvalidRequest(
        f"input item type {kind!r} is not supported here "
        "(use message, function_call or function_call_output)",
        param=f"{where}.type",
    )


def _id(item: Item) -> str | None:
    """The item's own id when it has a usable one (ours is made otherwise)."""
    value = item.get("id")
    return value if isinstance(value, str) and value else None


def _part(value: Any, where: str) -> Item:
    part = require_object(value, where)
    kind = part.get("type")
    if kind not in _PART_TYPES:
        raise InvalidRequest(
            f"content part type {kind!r} is not supported (use {', '.join(_PART_TYPES)})",
            param=f"{where}.type",
        )
    if kind == "input_image":
        require_str(part.get("image_url"), f"{where}.image_url")
    else:
        require_str(part.get("refusal" if kind == "refusal" else "text"), where)
    return part


# -- request: Responses → chat ---------------------------------------------------------------


def to_chat(req: ResponsesRequest, items: list[Item]) -> Item:
    """The chat request for `req` over the conversation `items` (stored history + input)."""
    messages: list[Item] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    for item in items:
        _append(messages, item)
    if not messages:
        raise InvalidRequest("input has nothing a model can read", param="input")
    out: Item = {"model": req.model, "messages": messages}
    if req.max_output_tokens is not None:
        out["max_tokens"] = req.max_output_tokens
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if getattr(req, key) is not None:
            out[key] = getattr(req, key)
    effort = (req.reasoning or {}).get("effort")
    if isinstance(effort, str):
        out["reasoning_effort"] = effort  # chat's name for it; engines without it ignore it
    response_format = _response_format(req.text)
    if response_format is not None:
        out["response_format"] = response_format
    tools = [_tool(t, f"tools.{i}") for i, t in enumerate(req.tools or []) if _is_function(t)]
    if tools:
        out["tools"] = tools
    if req.tool_choice is not None and tools:
        out["tool_choice"] = _tool_choice(req.tool_choice)
    return out


def _append(messages: list[Item], item: Item) -> None:
    kind = item["type"]
    if kind == "message":
        role = "system" if item["role"] == "developer" else item["role"]
        messages.append({"role": role, "content": _content(item["content"])})
    elif kind == "function_call":
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item["output"]
        content = output if isinstance(output, str) else _content(output)
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})


def _content(parts: list[Item]) -> str | list[Item]:
    """Plain text when every part is text (what every chat template understands)."""
    if all(p.get("type") != "input_image" for p in parts):
        return "\n".join(p.get("text") or p.get("refusal") or "" for p in parts)
    out: list[Item] = []
    for p in parts:
        if p.get("type") == "input_image":
            out.append({"type": "image_url", "image_url": {"url": p["image_url"]}})
        else:
            out.append({"type": "text", "text": p.get("text") or p.get("refusal") or ""})
    return out


def _response_format(text: Item | None) -> Item | None:
    """`text.format` as chat's `response_format` (None for plain text)."""
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    kind = require_object(fmt, "text.format").get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {
            "name": fmt.get("name") or "response",
            "schema": require_object(fmt.get("schema"), "text.format.schema"),
        }
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(
        "text.format.type must be text, json_object or json_schema", param="text.format.type"
    )


def _is_function(tool: Item) -> bool:
    return tool.get("type") == "function"


def dropped_tools(req: ResponsesRequest) -> list[str]:
    """Tools that are not functions (web search, file search...): a chat backend cannot run
    them, so `to_chat` leaves them out; the caller is told in a warning header."""
    return [str(t.get("type")) for t in req.tools or [] if not _is_function(t)]


def _tool(tool: Item, where: str) -> Item:
    function: Item = {"name": require_str(tool.get("name"), f"{where}.name")}
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    for key in ("description", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: str | Item) -> str | Item:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {
            "type": "function",
            "function": {"name": require_str(choice.get("name"), "tool_choice")},
        }
    raise InvalidRequest(
        "tool_choice must be auto, none, required or {type: function, name}",
        param="tool_choice",
    )


# -- response: chat → Responses --------------------------------------------------------------

Status = Literal["in_progress", "completed", "incomplete"]


def response_object(
    req: ResponsesRequest,
    resp_id: str,
    created_at: int,
    output: list[Item],
    status: Status,
    use: Item | None = None,
) -> Item:
    """The response object (`"object": "response"`), echoing the request's settings."""
    reasoning = {"effort": (req.reasoning or {}).get("effort"), "summary": None}
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": reasoning,
        "store": req.store,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "text": req.text if req.text and req.text.get("format") else {"format": {"type": "text"}},
        "tool_choice": req.tool_choice or "auto",
        "tools": req.tools or [],
        "truncation": "disabled",
        "usage": use,
        "user": req.user,
        "metadata": req.metadata or {},
    }


def usage(u: Item | None) -> Item:
    u = u or {}
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": int(u.get("total_tokens") or prompt + completion),
    }


def text_part(text: str) -> Item:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call(call_id: str, name: str, arguments: str, status: Status) -> Item:
    return {
        "type": "function_call",
        "id": new_id("fc_"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def from_chat(resp: Item, req: ResponsesRequest, resp_id: str, created_at: int) -> Item:
    """The response object for a chat completion."""
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[Item] = []
    if message.get("reasoning_content"):
        output.append(_reasoning(message["reasoning_content"]))
    calls = message.get("tool_calls") or []
    if message.get("content") or not calls:
        output.append(_message("assistant", [text_part(message.get("content") or "")]))
    for call in calls:
        function = call.get("function") or {}
        call_id = call.get("id") or new_id("call_")
        output.append(
            function_call(
                call_id, function.get("name") or "", function.get("arguments") or "", "completed"
            )
        )
    status: Status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    return response_object(req, resp_id, created_at, output, status, usage(resp.get("usage")))


def _reasoning(text: str) -> Item:
    return {
        "type": "reasoning",
        "id": new_id("rs_"),
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def now() -> int:
    return int(time.time())


# -- errors ----------------------------------------------------------------------------------


def error_event(exc: MloError) -> Item:
    """A failure after the stream began: Responses' `error` event."""
    return {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param}


def sse(event: Event) -> bytes:
    """One event in the Responses framing: `event: <type>` then `data: <json>`."""
    return sse_event(event, event["type"])
