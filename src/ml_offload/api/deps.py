"""Small helpers shared by the routes: the services object and request bodies."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ml_offload.api.security import context_of
from ml_offload.domain import ModelSpec, RequestContext
from ml_offload.errors import NotFound
from ml_offload.security.keys import in_scope
from ml_offload.services import Services
from ml_offload.wire.body import JSON_MEDIA_TYPE


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def request_context(request: Request) -> RequestContext | None:
    """Who is asking (set by the security middleware; None where the app runs without it)."""
    return context_of(request.scope)


def reveals_internals(request: Request) -> bool:
    """Whether the caller may see model paths, upstream URLs and engine addresses in status
    views: an admin key, or anyone when auth is off (every caller is then an admin)."""
    ctx = request_context(request)
    return ctx is None or ctx.admin or not services(request).guard.auth_on


def visible_models(request: Request) -> list[ModelSpec]:
    """The deployments the caller may see in lists: all of them, except for a key scoped to
    some models, which sees those it may use (as OpenAI lists the models a key can call)."""
    specs = services(request).status.specs()  # with the fleet's models, on a gateway
    ctx = request_context(request)
    key = ctx.key if ctx is not None else None
    if key is None or not key.models or ctx is None or ctx.admin:
        return specs
    return [spec for spec in specs if in_scope(key.models, spec.name, spec)]


def visible_model(request: Request, name: str) -> ModelSpec:
    """`name` resolved, or NotFound when the caller's key may not use it (the same answer as
    for a model that does not exist: a scoped key learns nothing of the others)."""
    visible = visible_models(request)
    spec = next((s for s in visible if name in s.names), None)
    if spec is None:
        spec = services(request).registry.resolve(name)  # NotFound naming what exists
    if spec not in visible:
        raise NotFound(f"model {name!r} not found")
    return spec


async def read_body(request: Request) -> bytes:
    """The request body; `server.max_body_bytes` is enforced before any route runs (413, in
    api/headers.py), declared or chunked."""
    return await request.body()


def json_response(data: Any, status: int = 200) -> Response:
    """JSON through orjson (several times faster than the stdlib encoder on the hot path)."""
    return Response(orjson.dumps(data), status_code=status, media_type=JSON_MEDIA_TYPE)
