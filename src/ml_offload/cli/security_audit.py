"""`mlo security-audit`: the configuration's security findings, worst first (exit 1 on a high)."""

from __future__ import annotations

import asyncio

import typer
from rich.table import Table
from rich.text import Text

from ml_offload.cli.common import ConfigOpt, JsonOpt, out, settings_for
from ml_offload.config import Settings
from ml_offload.domain import ApiKey
from ml_offload.registry import remote_specs
from ml_offload.security import posture
from ml_offload.services import stored_keys

_STYLES = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def security_audit(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Check TLS, auth, the admin key, keys' limits, file permissions, providers and CORS."""
    settings = settings_for(config)
    findings = posture.check(settings, read_keys(settings), deployments=remote_specs(settings))
    if as_json:
        out.print_json(data=[f.as_dict() for f in findings])
    elif not findings:
        out.print("no findings")
    else:
        table = Table("SEVERITY", "CHECK", "FINDING", show_lines=True)
        for f in findings:
            table.add_row(Text(f.severity, style=_STYLES[f.severity]), f.check, f.message)
        out.print(table)
    if any(f.severity == "high" for f in findings):
        raise typer.Exit(1)


def read_keys(settings: Settings) -> list[ApiKey] | None:
    """The stored keys; [] when there is no database yet, None when it cannot be read."""
    return asyncio.run(stored_keys(settings))
