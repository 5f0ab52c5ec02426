"""The dashboard at `/ui`: its static files, and its live feed (`/ui/events`, server-sent events).

The page and its assets hold no data, so they are served before the key check (the page asks
for the key, keeps it in session storage and sends it as a bearer header, never in the URL).
The feed and every action the page takes go through the gateway's own routes and its key check:
a non-admin key sees names and state only, and gets no buttons.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ml_offload.api.deps import request_context, reveals_internals, services, visible_models
from ml_offload.api.streaming import EventStreamResponse
from ml_offload.domain import ModelSpec
from ml_offload.errors import MloError
from ml_offload.security.audit import audit_path
from ml_offload.security.audit_read import tail
from ml_offload.services import Services
from ml_offload.wire import sse
from ml_offload.wire.native import AuditEventView, DashboardView, FleetNodeView, GenAiTotals

log = logging.getLogger(__name__)

PAGE = "/ui"
ASSETS = "/ui/assets/"
FEED_INTERVAL_S = 2.0
AUDIT_EVENTS = 15
_MEDIA_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_PAGE_HEADERS = {"content-security-policy": "default-src 'self'; frame-ancestors 'none'"}

router = APIRouter()


class UiAssets:
    """Serves `/ui` and `/ui/assets/<file>` from the package, outside the key check; passes
    everything else (the feed included) on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        folder = files("ml_offload") / "ui"
        self._files = {
            f.name: str(f) for f in folder.iterdir() if f.name.endswith(tuple(_MEDIA_TYPES))
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        response: Response | None = None
        if path == "/":  # people type the bare address
            response = RedirectResponse(PAGE)
        elif path in (PAGE, PAGE + "/"):
            response = self._file("index.html")
        elif path.startswith(ASSETS) and path[len(ASSETS) :] in self._files:
            response = self._file(path[len(ASSETS) :])
        if response is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def _file(self, name: str) -> Response:
        suffix = name[name.rfind(".") :]
        return FileResponse(
            self._files[name], media_type=_MEDIA_TYPES[suffix], headers=_PAGE_HEADERS
        )


@router.get("/ui/events", response_model=None)
async def events(request: Request) -> Response:
    """A `DashboardView` now and every FEED_INTERVAL_S seconds, until the page goes away."""
    svc = services(request)
    ctx = request_context(request)
    reveal = reveals_internals(request)
    admin = ctx is None or ctx.admin or not svc.guard.auth_on

    async def feed() -> AsyncIterator[bytes]:
        while True:
            view = await snapshot(svc, reveal=reveal, admin=admin, specs=visible_models(request))
            yield sse.event(view.model_dump(mode="json"))
            await asyncio.sleep(FEED_INTERVAL_S)

    return EventStreamResponse(feed(), _nothing)


async def _nothing() -> None:
    return None


async def snapshot(
    svc: Services, *, reveal: bool, admin: bool, specs: Sequence[ModelSpec] | None = None
) -> DashboardView:
    """The dashboard's view; `specs`: the models the caller may see (default: all)."""
    audit = await asyncio.to_thread(_recent_audit, svc) if admin else []
    return DashboardView(
        time=time.time(),
        admin=admin,
        models=svc.status.models(reveal=reveal, specs=specs).data,
        memory=svc.status.memory(reveal=reveal),
        totals=GenAiTotals.model_validate(svc.metrics.genai.totals()),
        audit=audit,
        nodes=await _nodes(svc) if admin else [],
    )


async def _nodes(svc: Services) -> list[FleetNodeView]:
    """The fleet's nodes (as `/nodes`), in a fleet; none when the database does not answer
    (the feed goes on; `/nodes` says why)."""
    if svc.settings.fleet.role == "all":
        return []
    try:
        return (await svc.fleet.view()).data
    except MloError as exc:
        log.warning("dashboard: the fleet's nodes could not be read: %s", exc)
        return []


def _recent_audit(svc: Services) -> list[AuditEventView]:
    settings = svc.settings
    if not settings.security.audit.enabled:
        return []
    path = audit_path(settings)
    if not path.exists():
        return []
    entries, _ = tail(path, AUDIT_EVENTS)
    return [_audit_view(e.event) for e in reversed(entries) if "path" in e.event]


def _audit_view(event: dict[str, Any]) -> AuditEventView:
    return AuditEventView.model_validate({k: event.get(k) for k in AuditEventView.model_fields})
