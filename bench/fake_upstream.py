"""A very fast loopback server that speaks llama.cpp server's OpenAI-compatible wire format, and
Anthropic's Messages stream at /v1/messages (the event sequence of
https://docs.claude.com/en/docs/build-with-claude/streaming), for passthrough figures.

Raw asyncio Protocol (uvloop when available), HTTP/1.1 keep-alive, precomputed responses, so a
gateway proxying to it is measured rather than the upstream.

    python bench/fake_upstream.py --port 0 --chunks 16      # prints READY http://127.0.0.1:PORT

Importable: ``start_in_thread(port=0) -> (url, stop_fn)`` and ``spawn(port=0) -> (url, Popen)``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import orjson

CREATED = 1_700_000_000
CONTENT_TOKEN = "hello "
REPLY = "Hello! This is a fixed reply from the fake upstream."
PROMPT_TOKENS = 12
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Options:
    chunks: int = 16
    chunk_delay_s: float = 0.0
    model_id: str = "fake"


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    head = (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nServer: fake-llama\r\nKeep-Alive: timeout=5, max=100000\r\n\r\n"
    )
    return head + body


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nServer: fake-llama\r\n\r\n"
)
HEALTH = _response("200 OK", b'{"status":"ok"}')
NOT_FOUND = _response(
    "404 Not Found",
    orjson.dumps({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}),
)
BAD_REQUEST = _response(
    "400 Bad Request",
    orjson.dumps(
        {"error": {"code": 400, "message": "Invalid JSON body", "type": "invalid_request_error"}}
    ),
)


def _chunk(obj: object) -> bytes:
    """One SSE event framed as one HTTP chunk."""
    event = b"data: " + (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }


def models_body(opts: Options) -> bytes:
    data = [
        {
            "id": opts.model_id,
            "object": "model",
            "created": CREATED,
            "owned_by": "llamacpp",
            "meta": {"n_ctx_train": 8192, "n_params": 134515008},
        }
    ]
    return orjson.dumps({"object": "list", "data": data})


def chat_body(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-fake0001",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "b0000-fake",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": REPLY},
                }
            ],
            "usage": _usage(12),
        }
    )


def messages_body(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_fake0001",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": REPLY}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 12},
        }
    )


def completion_body(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "cmpl-fake0001",
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "b0000-fake",
            "choices": [{"index": 0, "text": REPLY, "logprobs": None, "finish_reason": "stop"}],
            "usage": _usage(12),
        }
    )


def chat_events(model: str, chunks: int, include_usage: bool) -> list[bytes]:
    base = {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "b0000-fake",
    }

    def choice(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [_chunk(choice({"role": "assistant", "content": None}))]
    events += [_chunk(choice({"content": CONTENT_TOKEN})) for _ in range(chunks)]
    events.append(_chunk(choice({}, "stop")))
    if include_usage:
        events.append(_chunk({**base, "choices": [], "usage": _usage(chunks)}))
    events.append(_chunk(b"[DONE]") + b"0\r\n\r\n")
    return events


def completion_events(model: str, chunks: int, include_usage: bool) -> list[bytes]:
    base = {
        "id": "cmpl-fake0001",
        "object": "text_completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "b0000-fake",
    }

    def choice(text: str, finish: str | None = None) -> dict[str, object]:
        return {
            **base,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    events = [_chunk(choice(CONTENT_TOKEN)) for _ in range(chunks)]
    events.append(_chunk(choice("", "stop")))
    if include_usage:
        events.append(_chunk({**base, "choices": [], "usage": _usage(chunks)}))
    events.append(_chunk(b"[DONE]") + b"0\r\n\r\n")
    return events


def _named(name: str, obj: object) -> bytes:
    """One named SSE event (Anthropic's framing) as one HTTP chunk."""
    event = b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def messages_events(model: str, chunks: int) -> list[bytes]:
    message = {
        "id": "msg_fake0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1},
    }
    text = {"type": "text_delta", "text": CONTENT_TOKEN}
    block = {"type": "text", "text": ""}
    events = [
        _named("message_start", {"type": "message_start", "message": message}),
        _named(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        _named("ping", {"type": "ping"}),
    ]
    events += [
        _named("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": text})
        for _ in range(chunks)
    ]
    events += [
        _named("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _named(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": chunks},
            },
        ),
        _named("message_stop", {"type": "message_stop"}) + b"0\r\n\r\n",
    ]
    return events


class Responses:
    """Precomputed answers, cached per (route, model, stream, include_usage)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.models = _response("200 OK", models_body(opts))
        self.events = lru_cache(maxsize=256)(self._events)
        self.body = lru_cache(maxsize=256)(self._body)

    def _body(self, path: str, model: str) -> bytes:
        make = {"/v1/chat/completions": chat_body, MESSAGES_PATH: messages_body}.get(
            path, completion_body
        )
        return _response("200 OK", make(model))

    def _events(self, path: str, model: str, include_usage: bool) -> list[bytes]:
        if path == "/v1/messages":
            events = messages_events(model, self.opts.chunks)
        else:
            make = chat_events if path == "/v1/chat/completions" else completion_events
            events = make(model, self.opts.chunks, include_usage)
        if self.opts.chunk_delay_s > 0:
            return [SSE_HEAD + events[0], *events[1:]]
        return [SSE_HEAD + b"".join(events)]


POST_PATHS = {"/v1/chat/completions", "/v1/completions", "/chat/completions", "/completions"}
MESSAGES_PATH = "/v1/messages"  # streamed only: the passthrough's figure is its time to first byte


class HttpProtocol(asyncio.Protocol):
    def __init__(self, responses: Responses) -> None:
        self.r = responses
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed stream is being written; hold later requests
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        while self.transport is not None and not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:])
            }
            try:
                parsed = self._body(headers, end + 4)
            except ValueError:
                self.transport.write(BAD_REQUEST)
                self.transport.close()
                return
            if parsed is None:
                return  # need more bytes
            body, consumed = parsed
            self.buf = self.buf[consumed:]
            close = headers.get("connection", "").lower() == "close" or parts[-1] == "HTTP/1.0"
            self._answer(parts[0], parts[1].split("?", 1)[0], body, close)

    def _body(self, headers: dict[str, str], start: int) -> tuple[bytes, int] | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked(start)
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("body too large")
        if len(self.buf) < start + length:
            return None
        return self.buf[start : start + length], start + length

    def _chunked(self, pos: int) -> tuple[bytes, int] | None:
        out: list[bytes] = []
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(self.buf[pos:eol].split(b";")[0], 16)
            if len(self.buf) < eol + 2 + size + 2:
                return None
            if size == 0:
                trailer_end = self.buf.find(b"\r\n\r\n", eol)
                return (b"".join(out), trailer_end + 4) if trailer_end >= 0 else None
            out.append(self.buf[eol + 2 : eol + 2 + size])
            pos = eol + 2 + size + 2

    def _answer(self, method: str, path: str, body: bytes, close: bool) -> None:
        t = self.transport
        assert t is not None
        if method == "GET" and path == "/health":
            t.write(HEALTH)
        elif method == "GET" and path in ("/v1/models", "/models"):
            t.write(self.r.models)
        elif method == "POST" and path in POST_PATHS:
            self._post(path if path.startswith("/v1") else "/v1" + path, body)
        elif method == "POST" and path == MESSAGES_PATH:
            self._post(path, body)
        else:
            t.write(NOT_FOUND)
        if close and not self.busy:
            t.close()
        self.close_after = close

    def _post(self, path: str, body: bytes) -> None:
        t = self.transport
        assert t is not None
        try:
            req = orjson.loads(body)
            model = str(req.get("model") or self.r.opts.model_id)
        except (orjson.JSONDecodeError, AttributeError):
            t.write(BAD_REQUEST)
            return
        if not req.get("stream"):
            t.write(self.r.body(path, model))
            return
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        events = self.r.events(path, model, usage)
        t.write(events[0])
        if len(events) > 1:
            self.busy = True
            asyncio.get_running_loop().call_later(self.r.opts.chunk_delay_s, self._next, events, 1)

    def _next(self, events: list[bytes], i: int) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(events[i])
        if i + 1 < len(events):
            loop = asyncio.get_running_loop()
            loop.call_later(self.r.opts.chunk_delay_s, self._next, events, i + 1)
        else:
            self.busy = False
            if self.close_after:
                t.close()
            else:
                self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


async def serve(host: str, port: int, opts: Options) -> asyncio.Server:
    responses = Responses(opts)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HttpProtocol(responses), host, port, backlog=4096, reuse_address=True
    )


def start_in_thread(port: int = 0, opts: Options | None = None) -> tuple[str, Callable[[], None]]:
    """Run the server on its own event loop in a daemon thread; returns (url, stop_fn)."""
    loop = new_loop()
    ready = threading.Event()
    holder: list[asyncio.Server] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        holder.append(loop.run_until_complete(serve("127.0.0.1", port, opts or Options())))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
    thread.start()
    ready.wait(10)
    server = holder[0]

    def stop() -> None:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", stop


def spawn(
    port: int = 0, chunks: int = 16, chunk_delay_ms: float = 0.0, timeout_s: float = 10.0
) -> tuple[str, subprocess.Popen[str]]:
    """Start the server as a subprocess; returns (url, process). Terminate the process when done."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--port",
        str(port),
        "--chunks",
        str(chunks),
        "--chunk-delay-ms",
        str(chunk_delay_ms),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # blocks until READY or exit
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"fake upstream did not start (got {line!r})")
    return line.split(" ", 1)[1], proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--chunks", type=int, default=16, help="content deltas per stream")
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between SSE events")
    ap.add_argument("--model-id", default="fake")
    args = ap.parse_args()
    opts = Options(args.chunks, args.chunk_delay_ms / 1000, args.model_id)
    loop = new_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(serve(args.host, args.port, opts))
    port = server.sockets[0].getsockname()[1]
    print(f"READY http://{args.host}:{port}", flush=True)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
