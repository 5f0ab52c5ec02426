"""The outermost middleware: security headers on every response, the request body cap before
any route runs, and start-up errors in one line instead of a traceback.

Pure ASGI and cheap on the hot path: a precomputed header list appended to each response start,
one pass over the request headers, nothing else per request.
"""

from __future__ import annotations

import sys
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml_offload.api.errors import error_response
from ml_offload.errors import MloError, PayloadTooLarge

_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_NO_STORE = (b"cache-control", b"no-store")
_HSTS = (b"strict-transport-security", b"max-age=31536000")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes (server.max_body_bytes)")


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, tls: bool) -> None:
        self.app = app
        self.limit = max_body_bytes
        self.headers = [*_HEADERS, _HSTS] if tls else list(_HEADERS)
        self.headers_no_store = [*self.headers, _NO_STORE]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                send = _one_line_startup_errors(send)
            await self.app(scope, receive, send)
            return
        if scope["method"] in _BODY_METHODS:
            declared = _content_length(scope)
            if declared is None:  # chunked: counted as it arrives
                receive = _counting(receive, self.limit)
            elif declared > self.limit:
                response = error_response(too_large(self.limit), scope["path"])
                await response(scope, receive, self._with_headers(send))
                return
        await self.app(scope, receive, self._with_headers(send))

    def _with_headers(self, send: Send) -> Send:
        extra, extra_no_store = self.headers, self.headers_no_store

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                for name, _ in headers:
                    if name == b"cache-control":  # a stream's own no-cache stays alone
                        message["headers"] = headers + extra
                        break
                else:
                    message["headers"] = headers + extra_no_store
            await send(message)

        return send_with_headers


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _counting(receive: Receive, limit: int) -> Receive:
    received = 0

    async def receive_counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(limit)
        return message

    return receive_counted


def _one_line_startup_errors(send: Send) -> Send:
    """Starlette reports a failed start-up with the whole traceback; for our own errors (bad
    settings, an unreachable database, an unsafe bind) one line that says how to fix it is
    clearer. `send` runs inside Starlette's `except` block, so the error is at hand."""

    async def send_one_line(message: Message) -> None:
        if message["type"] == "lifespan.startup.failed":
            exc: Any = sys.exc_info()[1]
            if isinstance(exc, MloError | OSError):
                message = {**message, "message": f"cannot start: {exc}"}
        await send(message)

    return send_one_line
