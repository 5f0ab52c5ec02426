"""A loopback Anthropic Messages API (`POST /v1/messages`) for tests.

Followed: https://docs.claude.com/en/api/messages (headers `x-api-key` and `anthropic-version`,
required `max_tokens`, `system`, alternating user/assistant turns, tool_use / tool_result
blocks, `stop_reason`, `usage`), /en/api/messages-streaming (the event sequence
message_start, content_block_start, ping, content_block_delta with text_delta or
input_json_delta, content_block_stop, message_delta with stop_reason and cumulative usage,
message_stop; `event: <type>` then `data: <json>` per event; error events mid-stream) and
/en/api/errors (`{"type": "error", "error": {"type", "message"}}`; 401 authentication_error,
400 invalid_request_error, 529 overloaded_error; a `request-id` header).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from aiohttp import web

from tests.integration.fake_server import LoopbackServer, sse

TOOL_INPUT = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3]}
# mode "native": what only a passthrough keeps (extended thinking with its signature, a
# redacted block, then text and a tool call) and usage with prompt-cache counts
NATIVE_CONTENT: list[dict[str, Any]] = [
    {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCkYIARgCKkB="},
    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT"},
    {"type": "text", "text": "Let me check."},
    {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": TOOL_INPUT},
]
NATIVE_USAGE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 200,
    "output_tokens": 15,
}


class FakeAnthropic(LoopbackServer):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key
        self.mode = "text"  # "text", "tool", "native", "overloaded", "stream_error"
        self.frames: list[bytes] = []  # the last stream's events, as sent

    async def _count(self, request: web.Request) -> web.Response:
        body = await self.record(request)
        if request.headers.get("x-api-key") != self.api_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if "max_tokens" in body or not body.get("messages"):
            return self._error(400, "invalid_request_error", "count_tokens takes messages only")
        return web.json_response({"input_tokens": 7 + len(json.dumps(body["messages"]))})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count)

    def _error(self, status: int, kind: str, message: str) -> web.Response:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return web.json_response(body, status=status, headers={"request-id": "req_fake"})

    def _refusal(self, request: web.Request, body: dict[str, Any]) -> web.Response | None:
        if request.headers.get("x-api-key") != self.api_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "invalid_request_error", "anthropic-version: header required")
        if "max_tokens" not in body:
            return self._error(400, "invalid_request_error", "max_tokens: Field required")
        roles = [m["role"] for m in body.get("messages", [])]
        if not roles or roles[0] != "user" or any(a == b for a, b in itertools.pairwise(roles)):
            return self._error(400, "invalid_request_error", "messages: roles must alternate")
        if self.mode == "overloaded":
            return self._error(529, "overloaded_error", "Overloaded")
        return None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        refused = self._refusal(request, body)
        if refused is not None:
            return refused
        content = self._content()
        reason = "tool_use" if self.mode in ("tool", "native") else "end_turn"
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "msg_fake01",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": content,
                    "stop_reason": reason,
                    "stop_sequence": None,
                    "usage": self._usage({"input_tokens": 12, "output_tokens": 5}),
                }
            )
        self.frames = [_event(e) for e in self._events(body, content, reason)]
        return await sse(request, self.frames)

    def _usage(self, usage: dict[str, int]) -> dict[str, int]:
        return dict(NATIVE_USAGE) if self.mode == "native" else usage

    def _content(self) -> list[dict[str, Any]]:
        if self.mode == "native":
            return NATIVE_CONTENT
        if self.mode != "tool":
            return [{"type": "text", "text": "Hello from Claude"}]
        return [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": TOOL_INPUT},
        ]

    def _events(
        self, body: dict[str, Any], content: list[dict[str, Any]], reason: str
    ) -> list[dict[str, Any]]:
        message = {
            "id": "msg_fake01",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**self._usage({"input_tokens": 12}), "output_tokens": 1},
        }
        events: list[dict[str, Any]] = [{"type": "message_start", "message": message}]
        events.append({"type": "ping"})
        if self.mode == "stream_error":
            error = {"type": "overloaded_error", "message": "Overloaded"}
            return [*events, {"type": "error", "error": error}]
        for index, block in enumerate(content):
            events += _block_events(index, block)
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": {"output_tokens": 15},
            }
        )
        events.append({"type": "message_stop"})
        return events


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    start: dict[str, Any]
    deltas: list[dict[str, Any]]
    if block["type"] == "thinking":  # thinking deltas, then the signature as its own delta
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [
            {"type": "thinking_delta", "thinking": block["thinking"]},
            {"type": "signature_delta", "signature": block["signature"]},
        ]
    elif block["type"] == "redacted_thinking":  # whole in its start event
        start, deltas = block, []
    elif block["type"] == "text":
        start = {"type": "text", "text": ""}
        words = block["text"].split(" ")
        deltas = [
            {"type": "text_delta", "text": w if i == 0 else " " + w} for i, w in enumerate(words)
        ]
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        raw = json.dumps(block["input"])
        deltas = [{"type": "input_json_delta", "partial_json": ""}]  # as the API starts them
        deltas += [
            {"type": "input_json_delta", "partial_json": raw[i : i + 3]}
            for i in range(0, len(raw), 3)
        ]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def _event(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
