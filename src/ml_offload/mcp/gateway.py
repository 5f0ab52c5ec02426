"""The platform tools' way to the gateway: its own HTTP API with the caller's key, so every call
goes through the same key check, scopes, limits and audit as any client's. On the gateway the
calls stay in the process (ASGI); over stdio they go to the running gateway."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx

from ml_offload.mcp.errors import ToolFailure
from ml_offload.wire.body import ERROR_SOURCE_HEADER

_FORWARDED = ("authorization", "x-api-key")
# The credentials of the MCP request being handled (set by policy.ToolPolicy for each message;
# empty over stdio): tools and resources alike send them on.
caller_headers: ContextVar[Mapping[str, str]] = ContextVar(
    "mlo_mcp_caller_headers", default=MappingProxyType({})
)


def forwarded(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's credentials, to be sent on with the gateway call."""
    if not headers:
        return {}
    return {k: headers[k] for k in _FORWARDED if headers.get(k)}


class GatewayClient:
    def __init__(self, client: httpx.AsyncClient, where: str, headers: Mapping[str, str]) -> None:
        self._client = client
        self._where = where  # said in errors: "the gateway at http://…"
        self._headers = dict(headers)  # stdio: MLO_API_KEY; HTTP: the caller's, per call

    async def close(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        answer = await self.send(method, path, body, headers)
        if answer.status >= 400:
            raise ToolFailure(f"the gateway answered {answer.status}: {answer.message}")
        return answer.data

    async def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """The gateway's answer whatever its status (ToolFailure only when it is down)."""
        started = time.perf_counter()
        try:
            resp = await self._client.request(
                method,
                path,
                json=body,
                headers={**self._headers, **caller_headers.get(), **(headers or {})},
            )
        except httpx.TransportError as exc:
            raise ToolFailure(
                f"the gateway at {self._where} is not reachable ({type(exc).__name__}); "
                "start it with `mlo serve` (or `mlo server start`), or set MLO_URL"
            ) from None
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        ok = resp.status_code < 400
        return Answer(
            status=resp.status_code,
            data=resp.json() if ok else None,
            message="" if ok else _message(resp),
            code=None if ok else _code(resp),
            upstream=resp.headers.get(ERROR_SOURCE_HEADER) == "upstream",
            latency_ms=latency_ms,
        )


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    data: Any  # the JSON body when the status is below 400
    message: str  # the error's message otherwise
    code: str | None  # the error's code (`engine_error`, `permission_denied`...)
    upstream: bool  # the error came from the model's server (X-Mlo-Error-Source: upstream)
    latency_ms: float


def _code(resp: httpx.Response) -> str | None:
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        return None
    return str(err["code"]) if isinstance(err, dict) and err.get("code") else None


def _message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err or data)[:300]
