"""`mlo mcp`: the server over stdin/stdout, for desktop clients that launch it. Knowledge and
sessions use the configured database directly; the platform tools call the running gateway."""

from __future__ import annotations

import httpx

from ml_offload.config import Settings, client_headers
from ml_offload.mcp.deps import open_deps
from ml_offload.mcp.gateway import GatewayClient
from ml_offload.mcp.server import build_server


async def serve_stdio(settings: Settings, gateway_url: str) -> None:
    client = httpx.AsyncClient(base_url=gateway_url, timeout=settings.server.upstream_timeout_s)
    gateway = GatewayClient(client, gateway_url, client_headers())
    async with open_deps(settings, gateway, guard=None) as deps:
        await build_server(deps).run_stdio_async()
