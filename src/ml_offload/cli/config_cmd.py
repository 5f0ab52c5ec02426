"""`mlo config check [FILE]`: validate a config and print the effective settings (the file,
then the environment's `MLO_*` and the original scripts' variables), secrets masked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ml_offload.cli.common import JsonOpt, err, out
from ml_offload.config import config_path, load_settings
from ml_offload.errors import safe_url

app = typer.Typer(help="Check the configuration.", no_args_is_help=True)


@app.command()
def check(
    file: Annotated[
        Path | None, typer.Argument(help="TOML config (default: $MLO_CONFIG, the XDG one).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate the config (one line naming each bad key) and print the effective settings
    with secrets masked."""
    settings = load_settings(file)  # ConfigError: one line, exit status 2
    effective = _masked(settings.model_dump(mode="json"))
    if as_json:
        out.print_json(data=effective)
        return
    chosen = config_path(file)
    err.print(f"config OK: {chosen or 'no file (defaults and environment)'}")
    out.print_json(data=effective)


def _masked(value: Any) -> Any:
    """Secrets already dump as "**********" (SecretStr); credentials inside URLs (a database,
    Redis, an upstream) are masked too."""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return safe_url(value) if isinstance(value, str) and "://" in value else value
