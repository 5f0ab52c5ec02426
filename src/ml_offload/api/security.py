"""The security bridge at the door: a pure ASGI middleware (cheap on the hot path).

It asks the guard who is calling before any route runs, refuses in the caller's dialect, hands
the request context to the routes (`scope["state"]["mlo_ctx"]`), and when the response (or the
stream, or the WebSocket) has ended asks the guard to settle tokens and write the audit event.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ml_offload.api.errors import error_response
from ml_offload.domain import RequestContext
from ml_offload.errors import MloError

CTX_KEY = "mlo_ctx"

log = logging.getLogger(__name__)
access = logging.getLogger("ml_offload.access")  # one line per request (`mlo logs`)


def cert_subject(scope: Scope) -> str | None:
    """The client certificate's subject (ASGI TLS extension, filled by api/tls.py)."""
    tls = scope.get("extensions", {}).get("tls") or {}
    name = tls.get("client_cert_name")
    return str(name) if name else None


def context_of(scope: Scope) -> RequestContext | None:
    ctx: RequestContext | None = scope.get("state", {}).get(CTX_KEY)
    return ctx


class SecurityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        guard = scope["app"].state.services.guard
        client = scope.get("client")
        try:
            ctx = await guard.authenticate(
                Headers(scope=scope),
                method=scope.get("method", "WEBSOCKET"),
                path=scope["path"],
                client=f"{client[0]}:{client[1]}" if client else None,
                cert_subject=cert_subject(scope),
            )
        except MloError as exc:
            await _refuse(scope, receive, send, exc)
            return
        scope.setdefault("state", {})[CTX_KEY] = ctx
        first_chunk: list[float] = []  # a stream's first event: its time to first token

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                extra = guard.response_headers(ctx) if ctx.status < 400 else None
                if extra:  # a refusal carries its own
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            elif message["type"] == "http.response.body":
                if not first_chunk and message.get("more_body") and message.get("body"):
                    first_chunk.append(time.perf_counter())
            elif message["type"] == "websocket.accept":
                ctx.status = 101
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except BaseException:
            ctx.status = ctx.status or 500
            raise
        finally:
            await guard.finish(ctx)
            if not ctx.public and access.isEnabledFor(logging.INFO):
                access.info("%s", access_line(ctx, first_chunk[0] if first_chunk else None))


def access_line(ctx: RequestContext, first_chunk_at: float | None) -> str:
    """One line per request: time, key, model, deployment, status, tokens, latency, TTFT
    (streams: the first event sent)."""
    now = time.perf_counter()
    key = ctx.key.name if ctx.key else ("admin" if ctx.admin else "-")
    ttft = f"{(first_chunk_at - ctx.started) * 1000:.1f}" if first_chunk_at else "-"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ctx.time or time.time()))
    return (
        f"{stamp} {ctx.method} {ctx.path} status={ctx.status} key={key} "
        f"model={ctx.model or '-'} deployment={ctx.backend or '-'} "
        f"tokens={ctx.prompt_tokens}+{ctx.completion_tokens} "
        f"latency_ms={(now - ctx.started) * 1000:.1f} ttft_ms={ttft}"
    )


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: MloError) -> None:
    if exc.status >= 500:  # ours to fix (the limit storage is down), as api/errors.py logs them
        log.warning("%s %s: %s", scope.get("method", "WEBSOCKET"), scope["path"], exc.message)
    response = error_response(exc, scope["path"])
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    # A WebSocket is refused before the handshake completes, with the same HTTP error body
    # (ASGI's denial response extension) where the server supports it, else close code 1008.
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(_start(response))
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})


def _start(response: Any) -> Message:
    return {
        "type": "websocket.http.response.start",
        "status": response.status_code,
        "headers": response.raw_headers,
    }
