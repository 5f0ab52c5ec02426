"""`mlo`: serve the gateway, list models, and load or unload them."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ml_offload.cli import analyze, audit, bootstrap, health, keys, pull, run, server, storage
from ml_offload.cli.client import CliError, GatewayClient, gateway_url
from ml_offload.cli.common import human_bytes, human_secs, warn_if_low_disk
from ml_offload.cli.hardening import (
    AllowInsecureOpt,
    TlsCertOpt,
    TlsClientCaOpt,
    TlsKeyOpt,
    security_env,
    uvicorn_tls,
)
from ml_offload.cli.security_audit import security_audit
from ml_offload.cli.vram import vram
from ml_offload.config import CONFIG_ENV, load_settings
from ml_offload.errors import MloError

app = typer.Typer(
    name="mlo",
    help="ml-offload: one secure endpoint in front of your local and cloud LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Models the gateway knows.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.command()(vram)
out = Console()
err = Console(stderr=True)

UrlOpt = Annotated[
    str | None, typer.Option("--url", help="Gateway address (default $MLO_URL or 127.0.0.1:9000).")
]


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help=f"TOML config file (or ${CONFIG_ENV}).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (server.port).")] = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_client_ca: TlsClientCaOpt = None,
    allow_insecure: AllowInsecureOpt = False,
) -> None:
    """Run the gateway in the foreground (default 127.0.0.1:9000)."""
    import uvicorn

    if config is not None:
        os.environ[CONFIG_ENV] = str(config.resolve())
    if host is not None:
        os.environ["MLO_SERVER__HOST"] = host
    if port is not None:
        os.environ["MLO_SERVER__PORT"] = str(port)
    os.environ.update(security_env(tls_cert, tls_key, tls_client_ca, allow_insecure))
    settings = load_settings()  # validate once here so a bad config is one line, not a trace
    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    warn_if_low_disk(settings)
    try:
        uvicorn.run(
            "ml_offload.api.app:create_app",
            factory=True,
            host=settings.server.host,
            port=settings.server.port,
            loop="uvloop",
            access_log=False,
            log_level=settings.server.log_level,
            timeout_graceful_shutdown=10,
            ws_max_size=settings.server.max_body_bytes,
            **uvicorn_tls(settings),
        )
    except SystemExit as exc:  # uvicorn's 3: start-up failed, its one-line reason is logged
        if exc.code == 3:
            raise typer.Exit(1) from None
        raise


@models_app.command("ls")
def models_ls(
    url: UrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every model the gateway can serve."""
    data = GatewayClient(gateway_url(url)).get("/models")["data"]
    if as_json:
        out.print_json(data=data)
        return
    table = Table(
        "NAME", "ALIASES", "SOURCE", "ARCH", "PARAMS", "QUANT", "SIZE", "CTX", "SLOTS", "STATE"
    )
    for m in data:
        info = m.get("info") or {}
        table.add_row(
            m["id"],
            ", ".join(m["aliases"]),
            m["source"],
            info.get("architecture") or "-",
            _count(info.get("parameters")),
            info.get("quantization") or "-",
            human_bytes(info.get("file_size_bytes") or None),
            str(m["ctx_size"]),
            str(m["parallel"]),
            m["state"],
        )
    out.print(table)


@app.command()
def ps(url: UrlOpt = None) -> None:
    """Show loaded models: state, requests in flight, idle time, memory estimate."""
    data = GatewayClient(gateway_url(url)).get("/models")["data"]
    rows = [m for m in data if m["state"] != "stopped"]
    if not rows:
        out.print("no models loaded")
        return
    table = Table(
        "NAME", "STATE", "PID", "IN FLIGHT", "QUEUED", "IDLE", "UP", "MEMORY (EST.)", "PINNED"
    )
    for m in rows:
        table.add_row(
            m["id"],
            m["state"],
            str(m["pid"] or "-"),
            f"{m['in_flight']}/{m['slots']}",
            str(m["queued"]),
            human_secs(m["idle_s"]),
            human_secs(m["loaded_for_s"]),
            human_bytes(m["estimate_bytes"] or None),
            "yes" if m["pinned"] else "no",
        )
    out.print(table)


@app.command()
def load(
    name: Annotated[str, typer.Argument(help="Model name or alias.")],
    pin: Annotated[bool, typer.Option("--pin", help="Keep it loaded (never evicted).")] = False,
    url: UrlOpt = None,
) -> None:
    """Load a model now (instead of on its first request)."""
    body = {"pin": True} if pin else None
    m = GatewayClient(gateway_url(url)).post(f"/models/{name}/load", body)
    out.print(f"{m['id']} {m['state']} in {m['load_time_s'] or 0:.2f}s (pid {m['pid'] or '-'})")


@app.command()
def unload(
    name: Annotated[str | None, typer.Argument(help="Model name or alias.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Unload every loaded model.")] = False,
    url: UrlOpt = None,
) -> None:
    """Unload a model (or --all), giving its memory back."""
    client = GatewayClient(gateway_url(url))
    if all_ == (name is not None):
        raise CliError("give a model name or --all")
    if all_:
        names = client.post("/models/unload_all")["unloaded"]
        out.print(f"unloaded {len(names)} model(s){': ' + ', '.join(names) if names else ''}")
        return
    m = client.post(f"/models/{name}/unload")
    out.print(f"{m['id']} {m['state']}")


def _count(n: Any) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


# Pipeline and storage commands (issue 6): thin commands over hub, daemon, pipeline, disk.
app.command()(pull.pull)
app.add_typer(server.app, name="server")
app.add_typer(keys.app, name="keys")
app.command()(run.run)
app.command()(run.export)
app.command()(health.health)
app.command()(storage.ls)
app.command()(storage.du)
app.command("clean-cache")(storage.clean_cache)
app.command()(bootstrap.bootstrap)
app.add_typer(audit.app, name="audit")  # issue 5: the audit log file
app.command("security-audit")(security_audit)
app.command("analyze")(analyze.analyze_command)  # issue 17: the code analyzer


def main() -> None:
    try:
        app()
    except (CliError, MloError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(exc, MloError) else 1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
