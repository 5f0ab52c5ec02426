"""The operator's tools: `provider_test`, `security_audit`, `rate_limit_check` and
`provider_config_validate`."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from ml_offload.mcp.config_check import ConfigCheck, Format, validate_snippet
from ml_offload.mcp.deps import McpDeps
from ml_offload.mcp.probe import ProbeResult, probe
from ml_offload.registry import remote_specs
from ml_offload.security.posture import SEVERITIES, Finding, check
from ml_offload.services import stored_keys
from ml_offload.wire.native import LimitsView

Name = Annotated[str, Field(min_length=1, max_length=255, description="a model name or alias")]
KeyRef = Annotated[str | None, Field(min_length=1, description="admin: a key's id or name")]


class Audit(BaseModel):
    """`mlo security-audit`'s findings, grouped by severity (most severe first)."""

    counts: dict[str, int]  # severity → how many
    findings: dict[str, list[dict[str, str]]]  # severity → [{check, message}]


def register_ops_tools(server: MCPServer[Any], deps: McpDeps) -> None:
    @server.tool()
    async def provider_test(model: Name) -> ProbeResult:
        """Probe a model or provider through the gateway: is it known, does its server answer,
        does it take the credentials, one token of completion; latency and the error in words."""
        return await probe(deps.gateway, model)

    @server.tool()
    async def security_audit() -> Audit:
        """The `mlo security-audit` findings (TLS, auth, keys, limits, file permissions,
        providers, CORS, audit log), by severity, each with its fix (admin key)."""
        return audit_view(await _findings(deps))

    @server.tool()
    async def rate_limit_check(
        key: Annotated[
            str | None, Field(min_length=1, description="admin: a key's id or name")
        ] = None,
    ) -> LimitsView:
        """The calling key's rate limits (or, for an admin key, the named key's): each limit,
        what is left of it this minute and when it resets, from the gateway's live limiter."""
        query = f"?{urlencode({'key': key})}" if key else ""
        return LimitsView.model_validate(await deps.gateway.call("GET", f"/limits{query}"))

    @server.tool()
    async def provider_config_validate(snippet: str, format: Format = "auto") -> ConfigCheck:
        """Check a model/provider config snippet (TOML or JSON: one model's table, a list of
        them, `[[models]]`, or any config sections) against the gateway's settings models;
        each error with its field path and the fix."""
        return validate_snippet(snippet, format)


async def _findings(deps: McpDeps) -> list[Finding]:
    settings, guard = deps.settings, deps.guard
    specs = remote_specs(settings)
    if guard is None:  # stdio: the local user's config and database, as the CLI reads them
        return check(settings, await stored_keys(settings), deployments=specs)
    keys = await guard.keys.list() if guard.keys is not None else []
    return check(settings, keys, deployments=specs, auth_on=guard.auth_on)


def audit_view(findings: list[Finding]) -> Audit:
    grouped: dict[str, list[dict[str, str]]] = {s: [] for s in SEVERITIES}
    for f in findings:
        grouped[f.severity].append({"check": f.check, "message": f.message})
    return Audit(counts={s: len(v) for s, v in grouped.items()}, findings=grouped)
