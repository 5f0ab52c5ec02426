"""A scripted OpenAI-compatible server on loopback, for what the small real model cannot do
reliably (tool calls with arguments in many fragments) and for failures (a dropped stream).

Followed: https://platform.openai.com/docs/api-reference/chat/create and
https://platform.openai.com/docs/api-reference/chat-streaming (SSE `data:` events, `[DONE]`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer: a JSON body, `raw` bytes sent as they are (a broken upstream), or
    SSE chunks (`drop` ends the stream without [DONE]; a `bytes` chunk is sent as its data)."""

    status: int = 200
    body: Any = None
    chunks: list[dict[str, Any] | bytes] = field(default_factory=list)
    drop: bool = False
    raw: bytes | None = None


Script = Callable[[dict[str, Any]], Reply]


class FakeOpenAI:
    def __init__(self, script: Script, host: str = "127.0.0.1") -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.server = ThreadingHTTPServer((host, 0), self._handler())
        self.url = f"http://{host}:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(request)
                reply = fake.script(request)
                if reply.raw is not None or reply.body is not None or reply.status != 200:
                    body = {} if reply.body is None else reply.body
                    data = reply.raw if reply.raw is not None else json.dumps(body).encode()
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for chunk in reply.chunks:
                    data = chunk if isinstance(chunk, bytes) else json.dumps(chunk).encode()
                    self.wfile.write(b"data: " + data + b"\n\n")
                    self.wfile.flush()
                if not reply.drop:
                    self.wfile.write(b"data: [DONE]\n\n")

        return Handler


@contextmanager
def fake_openai(script: Script, host: str = "127.0.0.1") -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(script, host)
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def tool_call_chunks(
    name: str, arguments: str, pieces: int, call_id: str = "call_fake1"
) -> list[dict[str, Any]]:
    """A streamed tool call whose arguments arrive in `pieces` fragments, then usage."""
    step = max(1, len(arguments) // pieces)
    fragments = [arguments[i : i + step] for i in range(0, len(arguments), step)]
    first = {"index": 0, "id": call_id, "type": "function", "function": {"name": name}}
    out = [chunk({"role": "assistant", "content": None, "tool_calls": [first]})]
    for frag in fragments:
        out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}))
    out.append(chunk({}, "tool_calls"))
    usage = {"prompt_tokens": 11, "completion_tokens": len(fragments), "total_tokens": 0}
    out.append({**chunk({}), "choices": [], "usage": usage})
    return out


def tool_call_response(name: str, arguments: str) -> dict[str, Any]:
    call = {
        "id": "call_fake1",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
