"""`mlo serve`: the gateway in the foreground, with the settings built once here and passed on.

This is the one place the CLI reaches into `api/` (declared in pyproject's import contracts).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ml_offload.cli.common import HELP, ConfigOpt, run_cli, warn_if_low_disk
from ml_offload.cli.hardening import (
    AllowInsecureOpt,
    TlsCertOpt,
    TlsClientCaOpt,
    TlsKeyOpt,
    serve_overrides,
)
from ml_offload.config import FleetRole, load_settings


def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (server.port).")] = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_client_ca: TlsClientCaOpt = None,
    allow_insecure: AllowInsecureOpt = False,
    role: Annotated[
        FleetRole | None,
        typer.Option(
            help="all: one machine; node: runs engines and publishes heartbeats; "
            "gateway: holds no engines (fleet.role)"
        ),
    ] = None,
) -> None:
    """Run the gateway in the foreground (default 127.0.0.1:9000)."""
    overrides = serve_overrides(
        host=host,
        port=port,
        cert=tls_cert,
        key=tls_key,
        client_ca=tls_client_ca,
        allow_insecure=allow_insecure,
    )
    if role is not None:
        overrides["fleet"] = {"role": role}
    path = _resolved(config)
    settings = load_settings(path, **overrides)  # a bad config is one line
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    warn_if_low_disk(settings)
    from ml_offload.api.serve import serve as run_gateway  # the declared cli → api edge

    try:
        run_gateway(settings, reread=lambda: load_settings(path, **overrides))
    except SystemExit as exc:  # uvicorn's 3: start-up failed, its one-line reason is logged
        if exc.code == 3:
            raise typer.Exit(1) from None
        raise


def _resolved(config: Path | None) -> Path | None:
    return config.resolve() if config is not None else None


def serve_main() -> None:
    """`mlo serve ...` as its own tree (cli/main.py): the same command, none of the others."""
    app = typer.Typer(name="mlo", help=HELP, add_completion=False, pretty_exceptions_enable=False)
    app.callback()(_root)  # a group, so `serve` stays the subcommand's name
    app.command()(serve)
    run_cli(app)


def _root() -> None:
    pass
