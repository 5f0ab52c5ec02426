"""`build_app(settings)`: the one FastAPI application; services are wired in the lifespan."""

from __future__ import annotations

import gc
import inspect
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ml_offload import __version__
from ml_offload.api import (
    admin,
    analyze_routes,
    anthropic_routes,
    errors,
    limits,
    native,
    ollama_routes,
    openai_routes,
    responses_routes,
    ui,
    ws,
)
from ml_offload.api.headers import HardeningMiddleware
from ml_offload.api.reload import reload_on_hup
from ml_offload.api.security import SecurityMiddleware
from ml_offload.api.streaming import ClientGone
from ml_offload.backends.base import ProcessFactory
from ml_offload.config import Settings
from ml_offload.mcp.http import PATH as MCP_PATH
from ml_offload.mcp.http import McpEndpoint
from ml_offload.services import Services

# FastAPI (0.16x) asks OpenTelemetry's globals on every request whether to trace it (~1% of a
# request's CPU); the gateway traces itself (otlp.py), so that hook is off where it exists.
NO_FASTAPI_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def build_app(
    settings: Settings,
    factory: ProcessFactory | None = None,
    reread: Callable[[], Settings] | None = None,
) -> FastAPI:
    """`reread`: how to read the settings again (the config file), for SIGHUP."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await Services.start(settings, factory)
        tune_gc()
        try:
            async with (
                mcp_endpoint.running(app, app.state.services),
                reload_on_hup(app.state.services, reread),
            ):
                yield
        finally:
            await app.state.services.close()

    mcp_endpoint = McpEndpoint()  # streamable HTTP MCP at /mcp (issue 16)
    app = FastAPI(
        title="ml-offload",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if settings.server.docs else None,
        redoc_url=None,
        **NO_FASTAPI_TELEMETRY,
    )
    errors.install(app)
    app.add_middleware(SecurityMiddleware)
    app.add_middleware(ui.UiAssets)  # the dashboard's page and assets: no data, no key
    add_outer_middleware(app, settings)

    @app.exception_handler(ClientGone)
    @app.exception_handler(ClientDisconnect)  # gone while its body was being read
    async def _gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)

    app.include_router(native.router)
    app.include_router(openai_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(responses_routes.router)  # issue 15: OpenAI's Responses API
    app.include_router(ollama_routes.router)
    app.include_router(ws.router)
    app.include_router(admin.router)
    app.include_router(analyze_routes.router)  # issue 17: the code analyzer
    app.include_router(limits.router)
    app.include_router(ui.router)
    app.router.routes.append(  # an ASGI app on the exact path (a Mount would want /mcp/)
        Route(MCP_PATH, mcp_endpoint, methods=["GET", "POST", "DELETE"], include_in_schema=False)
    )
    app.router.routes[:0] = hot_lane()
    return app


HOT = (
    openai_routes.chat_completions,
    openai_routes.completions,
    openai_routes.embeddings,
    anthropic_routes.messages,
    responses_routes.create_response,
    ollama_routes.chat,
    ollama_routes.generate,
    native.inference,
)


def hot_lane() -> list[Route]:
    """The inference endpoints again as plain Starlette routes, matched first: FastAPI's
    included-router matching and its scope bookkeeping were ~6% of a request's CPU
    (bench/README, issue 20). Same functions (each takes only the request), same exception
    handlers; the FastAPI routes stay for the OpenAPI schema."""
    modules = dict.fromkeys(sys.modules[endpoint.__module__] for endpoint in HOT)
    return [
        Route(
            route.path, route.endpoint, methods=list(route.methods or ()), include_in_schema=False
        )
        for module in modules
        for route in module.router.routes
        if isinstance(route, APIRoute) and route.endpoint in HOT
    ]


_EXPOSED = ["retry-after", "x-mlo-error-source"]
_RATE_HEADERS = [  # OpenAI's names, set by the rate limiter
    f"x-ratelimit-{field}-{what}"
    for field in ("limit", "remaining", "reset")
    for what in ("requests", "tokens")
]


def add_outer_middleware(app: FastAPI, settings: Settings) -> None:
    """Outside the key check: CORS (only when origins are configured, so preflights need no
    key) and, outermost, security headers, the body cap and one-line start-up errors."""
    if settings.security.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.security.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[*_EXPOSED, *_RATE_HEADERS],
        )
    app.add_middleware(
        HardeningMiddleware,
        max_body_bytes=settings.server.max_body_bytes,
        tls=settings.security.tls.cert_file is not None,
    )


def tune_gc() -> None:
    """Move start-up objects out of the collector's sight and collect the young generation
    less often: full collections over ~150k start-up objects made the p99 tail (bench/README)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
