"""The one object the request path talks to for security.

Order per request: `authenticate` (key, certificate binding, requests per minute) at arrival,
`admit` (model scope, tokens reserved from max_tokens) once the model is known, `outbound`
(redaction) for each deployment tried, `finish` (tokens settled from real usage, audit event)
when the response, or the stream, ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ml_offload.config import SecuritySettings
from ml_offload.domain import ModelSpec, RequestContext


class Guard:
    def __init__(self, settings: SecuritySettings, resolve: Callable[[str], ModelSpec]) -> None:
        self._settings = settings
        self._resolve = resolve  # a model name or alias to its spec (scopes by provider)

    async def start(self) -> None:
        """Open what the parts need (audit writer task, limiter storage)."""

    async def close(self) -> None:
        """Flush the audit log and close storages."""

    async def authenticate(
        self,
        headers: Mapping[str, str],
        *,
        method: str,
        path: str,
        client: str | None,
        cert_subject: str | None,
    ) -> RequestContext:
        """Who is asking. Raises AuthError (401), PermissionDenied (403) or RateLimited (429)."""
        return RequestContext(
            request_id=os.urandom(12).hex(),
            method=method,
            path=path,
            client=client,
            cert_subject=cert_subject,
            started=time.perf_counter(),
            time=time.time(),
        )

    def derive(self, parent: RequestContext) -> RequestContext:
        """A context for one request inside a connection (each WebSocket message), with the
        connection's identity; `admit` and `finish` apply to it like to an HTTP request."""
        return RequestContext(
            request_id=os.urandom(12).hex(),
            method="WS",
            path=parent.path,
            client=parent.client,
            cert_subject=parent.cert_subject,
            key=parent.key,
            admin=parent.admin,
            started=time.perf_counter(),
            time=time.time(),
        )

    async def admit(self, ctx: RequestContext, kind: str, data: Mapping[str, Any]) -> None:
        """May this request use `data["model"]`, and are there tokens left for it?"""
        ctx.model = str(data.get("model"))

    def outbound(
        self, spec: ModelSpec, data: dict[str, Any], ctx: RequestContext | None
    ) -> dict[str, Any]:
        """The request as it may leave for `spec` (secrets masked for cloud providers)."""
        return data

    async def finish(self, ctx: RequestContext) -> None:
        """Settle reserved tokens with the real usage and write the audit event (once)."""
        ctx.settled = True
