"""`mlo server start|stop|restart|status`: the gateway as a background daemon."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.table import Table

from ml_offload.cli.client import CliError, GatewayClient
from ml_offload.cli.common import (
    CaFileOpt,
    CertOpt,
    ConfigOpt,
    JsonOpt,
    KeyOpt,
    device_summary,
    human_bytes,
    human_secs,
    out,
    state_dir,
)
from ml_offload.cli.hardening import (
    AllowInsecureOpt,
    TlsCertOpt,
    TlsClientCaOpt,
    TlsKeyOpt,
    serve_overrides,
)
from ml_offload.client_tls import ClientTls
from ml_offload.config import config_path, load_settings
from ml_offload.daemon import Daemon, DaemonInfo, ServeTls
from ml_offload.wire.native import HealthView, MemoryView, ModelList, ModelView

app = typer.Typer(
    help="Run the gateway in the background: start, stop, restart, status.",
    no_args_is_help=True,
)

HostOpt = Annotated[str | None, typer.Option(help="Address to bind (default server.host).")]
PortOpt = Annotated[int | None, typer.Option(help="Port to bind (default server.port).")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for the gateway.")]


@app.command()
def start(
    config: ConfigOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    timeout: TimeoutOpt = 60,
    allow_insecure: AllowInsecureOpt = False,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_client_ca: TlsClientCaOpt = None,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Start the gateway in the background (pid and log files in the XDG state folder).

    With TLS (--tls-*, or the config's security.tls) its readiness is checked over HTTPS,
    trusting --ca-file and presenting --cert/--key under mutual TLS."""
    tls = _serve_tls(tls_cert, tls_key, tls_client_ca)
    client = ClientTls(ca_file, cert, key)
    info = _start(Daemon(state_dir()), config, host, port, timeout, allow_insecure, tls, client)
    out.print(f"gateway started: pid {info.pid}, {info.url}, log {info.log_path}")


@app.command()
def stop(timeout: TimeoutOpt = 20) -> None:
    """Stop the background gateway; its engines stop with it."""
    info = Daemon(state_dir()).stop(timeout)
    out.print(f"gateway stopped (pid {info.pid})")


@app.command()
def restart(
    config: ConfigOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    timeout: TimeoutOpt = 60,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Restart the background gateway (same address, config and TLS files unless given)."""
    daemon = Daemon(state_dir())
    old = daemon.running()
    allow_insecure, tls = False, ServeTls()
    if old is not None:
        daemon.stop()
        parts = urlsplit(old.url)
        host = host or parts.hostname
        port = port or parts.port
        config = config or (Path(old.config) if old.config else None)
        allow_insecure, tls = old.allow_insecure, ServeTls(**old.tls)
    client = ClientTls(ca_file, cert, key)
    info = _start(daemon, config, host, port, timeout, allow_insecure, tls, client)
    what = "restarted" if old is not None else "started (no daemon was running)"
    out.print(f"gateway {what}: pid {info.pid}, {info.url}, log {info.log_path}")


@app.command()
def status(
    as_json: JsonOpt = False,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Show whether the background gateway runs: uptime, loaded models, memory."""
    info = Daemon(state_dir()).running()
    if info is None:
        raise CliError(f"the gateway daemon is not running (state folder {state_dir()})")
    client = GatewayClient(info.url, timeout_s=10, tls=ClientTls(ca_file, cert, key))
    health = client.view(HealthView, "/health")
    vram = client.view(MemoryView, "/vram/status")
    models = [m for m in client.view(ModelList, "/models").data if m.state != "stopped"]
    if as_json:
        out.print_json(
            data={
                "daemon": {"pid": info.pid, "url": info.url, "log": info.log_path},
                "health": health.model_dump(mode="json"),
                "vram": vram.model_dump(mode="json"),
                "models": [m.model_dump(mode="json") for m in models],
            }
        )
        return
    _print_status(info, health, vram, models)


def _start(
    daemon: Daemon,
    config: Path | None,
    host: str | None,
    port: int | None,
    timeout: float,
    allow_insecure: bool,
    tls: ServeTls,
    client: ClientTls,
) -> DaemonInfo:
    overrides = serve_overrides(host=host, port=port)
    files = {name: path for name, path in asdict(tls).items() if path}  # TlsSettings' names
    if files:
        overrides["security"] = {"tls": files}
    settings = load_settings(config, **overrides)  # a bad config or TLS pair fails here
    return daemon.start(
        host=settings.server.host,
        port=settings.server.port,
        config=config_path(config),
        allow_insecure=allow_insecure,
        tls=tls,
        https=settings.security.tls.cert_file is not None,
        client=client,
        timeout_s=timeout,
    )


def _serve_tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> ServeTls:
    """The --tls-* files as absolute paths (a restart from another folder finds them)."""
    cert_file, key_file, ca_file = (str(p.resolve()) if p else None for p in (cert, key, client_ca))
    return ServeTls(cert_file, key_file, ca_file)


def _print_status(
    info: DaemonInfo, health: HealthView, vram: MemoryView, models: list[ModelView]
) -> None:
    out.print(
        f"gateway: running, pid {info.pid}, {info.url}, up {human_secs(health.uptime_s)} "
        f"(since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.started_at))}), "
        f"version {health.version}"
    )
    out.print(f"log: {info.log_path}")
    out.print(f"models: {health.models.known} known, {health.models.loaded} loaded")
    cpu = vram.cpu
    out.print(
        f"host memory: {human_bytes(cpu.used_estimate_bytes)} estimated in use of a "
        f"{human_bytes(cpu.budget_bytes)} budget"
    )
    for device in vram.devices:
        name, free, total, util = device_summary(device)
        out.print(f"GPU {name}: {free} free of {total}, {util} busy")
    low = " (LOW)" if health.disk.low else ""
    out.print(f"disk: {human_bytes(health.disk.free_bytes)} free{low}")
    if models:
        table = Table("NAME", "STATE", "PID", "IN FLIGHT", "IDLE", "MEMORY (EST.)")
        for m in models:
            table.add_row(
                m.id,
                m.state,
                str(m.pid or "-"),
                f"{m.in_flight}/{'-' if m.slots is None else m.slots}",
                human_secs(m.idle_s),
                human_bytes(m.estimate_bytes),
            )
        out.print(table)
