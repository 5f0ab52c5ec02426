"""Each tool call: the caller's scope checked as the HTTP routes check it, and one audit event
(tool name, the arguments' hash, outcome, duration) in the gateway's audit log.

On the gateway the caller is the request context the security middleware set for the `/mcp`
request (its key, admin or not). Over stdio the caller is the local user who runs `mlo mcp`
with the config; the platform tools' calls are checked and audited by the gateway, with
`MLO_API_KEY`."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jsonschema import Draft202012Validator
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent

from ml_offload.domain import RequestContext
from ml_offload.errors import MloError
from ml_offload.mcp.gateway import caller_headers, forwarded
from ml_offload.security.guard import Guard

# they change what everyone gets, or show the whole configuration
ADMIN_TOOLS = frozenset({"load_model", "unload_model", "security_audit"})
# the argument that names a model: checked against the key's model scope, as the routes do
MODEL_ARGUMENT = {
    "model_status": "name",
    "load_model": "name",
    "unload_model": "name",
    "infer": "model",
    "provider_test": "model",
    "create_session": "model",
}
_CTX_KEY = "mlo_ctx"  # where api/security.py leaves the request context in the ASGI scope


def caller_of(ctx: ServerRequestContext[Any, Any]) -> RequestContext | None:
    scope = getattr(ctx.request, "scope", None)
    if not isinstance(scope, dict):
        return None
    found = scope.get("state", {}).get(_CTX_KEY)
    return found if isinstance(found, RequestContext) else None


def refusal(tool: str, caller: RequestContext | None, guard: Guard | None) -> str | None:
    if guard is None or caller is None or not guard.auth_on or tool not in ADMIN_TOOLS:
        return None
    if caller.admin:
        return None
    who = f"key {caller.key.id} ({caller.key.name})" if caller.key else "this caller"
    return f"{tool} needs an admin key; {who} is not one"


Schemas = Callable[[], Awaitable[dict[str, dict[str, Any]]]]


def argument_error(tool: str, schema: dict[str, Any], arguments: Any) -> str | None:
    """What is wrong with the arguments, in words that name the field, or None."""
    for err in Draft202012Validator(schema).iter_errors(arguments):
        where = ".".join(str(p) for p in err.absolute_path) or "arguments"
        return f"{tool}: {where}: {err.message} (see the tool's inputSchema)"
    return None


class ToolPolicy:
    def __init__(self, guard: Guard | None, schemas: Schemas) -> None:
        self._guard = guard
        self._schemas = schemas  # tool name → input schema

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        token = caller_headers.set(forwarded(getattr(ctx.request, "headers", None)))
        try:
            return await self._handle(ctx, call_next)
        finally:
            caller_headers.reset(token)

    async def _handle(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method != "tools/call" or not isinstance(ctx.params, dict):
            return await call_next(ctx)
        tool = str(ctx.params.get("name"))
        caller = caller_of(ctx)
        event = self._event(tool, ctx.params.get("arguments"), caller)
        denied = refusal(tool, caller, self._guard)
        if denied is not None:
            await self._record(event, 403, "permission_denied")
            return _refused(denied)
        arguments = ctx.params.get("arguments") or {}
        schema = (await self._schemas()).get(tool)
        problem = schema and argument_error(tool, schema, arguments)
        if problem:
            await self._record(event, 400, "invalid_arguments")
            raise MCPError(INVALID_PARAMS, problem)
        try:
            self._check_model(tool, arguments, event)
        except MloError as exc:
            await self._record(event, exc.status, exc.code or "refused")
            return CallToolResult(
                content=[TextContent(type="text", text=exc.message)], is_error=True
            )
        try:
            result = await call_next(ctx)
        except BaseException:
            await self._record(event, 500, "failed")
            raise
        failed = bool(getattr(result, "is_error", False)) or (
            isinstance(result, dict) and bool(result.get("isError"))
        )
        await self._record(event, 500 if failed else 200, "tool_error" if failed else None)
        return result

    def _check_model(self, tool: str, arguments: Any, event: RequestContext | None) -> None:
        """The key's model scope, as the routes check it (`Guard.authorize`)."""
        field = MODEL_ARGUMENT.get(tool)
        if field is None or self._guard is None or not isinstance(arguments, dict):
            return
        self._guard.authorize(event, str(arguments.get(field)))

    def _event(
        self, tool: str, arguments: Any, caller: RequestContext | None
    ) -> RequestContext | None:
        if self._guard is None:
            return None
        return RequestContext(
            request_id=os.urandom(12).hex(),
            method="MCP",
            path=f"/mcp/tools/{tool}",
            client=caller.client if caller else None,
            cert_subject=caller.cert_subject if caller else None,
            key=caller.key if caller else None,
            admin=caller.admin if caller else False,
            prompt=arguments if arguments is not None else {},  # hashed by the audit writer
            started=time.perf_counter(),
            time=time.time(),
        )

    async def _record(self, event: RequestContext | None, status: int, error: str | None) -> None:
        if event is None or self._guard is None:
            return
        event.status = status
        if error:
            event.error = error
        await self._guard.finish(event)


def _refused(reason: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=reason)], is_error=True)
