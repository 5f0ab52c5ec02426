"""`/mcp` on the gateway: streamable HTTP behind the gateway's own key check, limits and audit
(the security middleware runs before it, as for every route). The platform tools call the
gateway's routes inside the process, with the caller's key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from ml_offload.mcp.deps import open_deps
from ml_offload.mcp.gateway import GatewayClient
from ml_offload.mcp.server import build_server
from ml_offload.services import Services

PATH = "/mcp"
_INTERNAL = "http://127.0.0.1"  # the in-process calls' base URL (no socket is opened)


class McpEndpoint:
    """The ASGI app at `/mcp`; it answers 503 until the gateway has started."""

    def __init__(self) -> None:
        self._app: ASGIApp | None = None

    @asynccontextmanager
    async def running(self, gateway_app: ASGIApp, services: Services) -> AsyncIterator[None]:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway_app),
            base_url=_INTERNAL,
            timeout=services.settings.server.upstream_timeout_s,
        )
        gateway = GatewayClient(client, "this gateway", {})
        async with open_deps(services.settings, gateway, db=services.db, guard=services.guard) as d:
            server = build_server(d)
            self._app = server.streamable_http_app(
                streamable_http_path=PATH, host=services.settings.server.host
            )
            async with server.session_manager.run():
                try:
                    yield
                finally:
                    self._app = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"MCP is starting"})
            return
        await self._app(scope, receive, send)
