"""`/mcp` on the gateway: streamable HTTP behind the gateway's own key check, limits and audit
(the security middleware runs before it, as for every route). The platform tools call the
gateway's routes inside the process, with the caller's key.

The MCP server is built on the first request to `/mcp`, not at start-up: the MCP SDK and what it
pulls in are about 28 MB of a gateway's idle memory that most deployments never use (issue 20).
It runs in a task of its own (its task group must be entered and left by one task) until the
gateway stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from ml_offload.services import Services

PATH = "/mcp"
_INTERNAL = "http://127.0.0.1"  # the in-process calls' base URL (no socket is opened)

log = logging.getLogger(__name__)


async def _send_error(send: Send, status: int, message: str) -> None:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json_errors(send: Send) -> Send:
    """The SDK's own plain-text refusals (421 for a foreign Host, 406, 415...) in the gateway's
    JSON error shape, with their status; everything else passes untouched."""
    pending: dict[str, Any] = {}

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            if message["status"] >= 400 and b"json" not in headers.get(b"content-type", b""):
                pending["status"] = message["status"]
                pending["text"] = b""
                return
        elif message["type"] == "http.response.body" and "status" in pending:
            pending["text"] += message.get("body", b"")
            if not message.get("more_body", False):
                text = pending["text"].decode(errors="replace").strip() or "refused"
                await _send_error(send, pending["status"], text)
            return
        await send(message)

    return wrapped


class McpEndpoint:
    """The ASGI app at `/mcp`; it answers 503 until the gateway has started (or when the MCP
    server could not start: the reason is logged, and the next request tries again)."""

    def __init__(self) -> None:
        self._app: ASGIApp | None = None
        self._gateway: tuple[ASGIApp, Services] | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def running(self, gateway_app: ASGIApp, services: Services) -> AsyncIterator[None]:
        self._gateway = (gateway_app, services)
        try:
            yield
        finally:
            self._gateway = None
            task, self._task = self._task, None
            if task is not None:
                self._stop.set()
                await task

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app or await self._start()
        if app is None:
            await _send_error(send, 503, "the MCP server is starting; try again")
            return
        await app(scope, receive, _json_errors(send))

    async def _start(self) -> ASGIApp | None:
        async with self._lock:
            gateway = self._gateway
            if self._app is None and gateway is not None:
                ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._stop.clear()
                self._task = asyncio.create_task(self._serve(*gateway, ready))
                await ready
            return self._app

    async def _serve(
        self, gateway_app: ASGIApp, services: Services, ready: asyncio.Future[None]
    ) -> None:
        try:
            await self._run(gateway_app, services, ready)
        except Exception:
            log.exception("the MCP server at %s could not start", PATH)
        finally:
            self._app = None
            if not ready.done():
                ready.set_result(None)

    async def _run(
        self, gateway_app: ASGIApp, services: Services, ready: asyncio.Future[None]
    ) -> None:
        import httpx

        from ml_offload.mcp.deps import open_deps
        from ml_offload.mcp.gateway import GatewayClient
        from ml_offload.mcp.server import build_server
        from ml_offload.security.guard import INTERNAL_HEADER

        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway_app),
            base_url=_INTERNAL,
            timeout=services.settings.server.upstream_timeout_s,
        )
        internal = {INTERNAL_HEADER: services.guard.internal_token}  # charged once, at /mcp
        gateway = GatewayClient(client, "this gateway", internal)
        async with open_deps(services.settings, gateway, db=services.db, guard=services.guard) as d:
            server = build_server(d)
            app = server.streamable_http_app(
                streamable_http_path=PATH, host=services.settings.server.host
            )
            async with server.session_manager.run():
                self._app = app
                ready.set_result(None)
                await self._stop.wait()
