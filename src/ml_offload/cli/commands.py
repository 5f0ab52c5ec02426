"""`mlo`'s command tree: serve the gateway, list models, load or unload them, and the rest
(each group in its own module). The entry point is cli/main.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ml_offload import __version__
from ml_offload.cli import (
    analyze,
    audit,
    bootstrap,
    config_cmd,
    health,
    keys,
    logs,
    mcp,
    nodes,
    pull,
    run,
    serve,
    server,
    storage,
)
from ml_offload.cli.client import CliError, connect
from ml_offload.cli.common import (
    HELP,
    CaFileOpt,
    CertOpt,
    ConfigOpt,
    KeyOpt,
    UrlOpt,
    human_bytes,
    human_secs,
    out,
    run_cli,
)
from ml_offload.cli.pull import rescan_line
from ml_offload.cli.security_audit import security_audit
from ml_offload.cli.vram import vram
from ml_offload.client_tls import ClientTls
from ml_offload.wire.native import ModelList, ModelView, Rescanned, Unloaded

app = typer.Typer(
    name="mlo",
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # mlo --install-completion
)
models_app = typer.Typer(help="Models the gateway knows.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.command()(serve.serve)
app.command()(vram)


@models_app.command("ls")
def models_ls(
    url: UrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """List every model the gateway can serve."""
    data = connect(url, config, tls=ClientTls(ca_file, cert, key)).view(ModelList, "/models").data
    if as_json:
        out.print_json(data=[m.model_dump(mode="json") for m in data])
        return
    table = Table(
        "NAME", "ALIASES", "SOURCE", "ARCH", "PARAMS", "QUANT", "SIZE", "CTX", "SLOTS", "STATE"
    )
    for m in data:
        info = m.info
        table.add_row(
            m.id,
            ", ".join(m.aliases),
            m.source,
            info.architecture if info else "-",
            _count(info.parameters if info else None),
            (info.quantization if info else None) or "-",
            human_bytes(info.file_size_bytes if info else None),
            str(m.ctx_size),
            str(m.parallel),
            f"{m.state}: {m.last_error}" if m.state == "unavailable" and m.last_error else m.state,
        )
    out.print(table)


@models_app.command("rescan")
def models_rescan(url: UrlOpt = None, config: ConfigOpt = None) -> None:
    """Read the model folder and config again: new models are served without a restart."""
    out.print(rescan_line(connect(url, config).post_view(Rescanned, "/models/rescan")))


@app.command()
def ps(
    url: UrlOpt = None,
    config: ConfigOpt = None,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show loaded models: state, requests in flight, idle time, time left before the idle
    unload (TTL), memory estimate."""
    data = connect(url, config, tls=ClientTls(ca_file, cert, key)).view(ModelList, "/models").data
    rows = [m for m in data if m.state not in ("stopped", "unavailable")]
    if as_json:
        views = [{**m.model_dump(mode="json"), "ttl_left_s": ttl_left_s(m)} for m in rows]
        out.print_json(data=views)
        return
    if not rows:
        out.print("no models loaded")
        return
    table = Table(
        "NAME",
        "STATE",
        "PID",
        "IN FLIGHT",
        "QUEUED",
        "IDLE",
        "TTL",
        "UP",
        "MEMORY (EST.)",
        "PINNED",
    )
    for m in rows:
        left = ttl_left_s(m)
        table.add_row(
            m.id,
            m.state,
            str(m.pid or "-"),
            f"{m.in_flight}/{'-' if m.slots is None else m.slots}",
            str(m.queued),
            human_secs(m.idle_s),
            "never" if left is None else human_secs(left),
            human_secs(m.loaded_for_s),
            human_bytes(m.estimate_bytes or None),
            "yes" if m.pinned else "no",
        )
    out.print(table)


@app.command()
def load(
    name: Annotated[str, typer.Argument(help="Model name or alias.")],
    pin: Annotated[bool, typer.Option("--pin", help="Keep it loaded (never evicted).")] = False,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Load a model now (instead of on its first request)."""
    body = {"pin": True} if pin else None
    client = connect(url, config, tls=ClientTls(ca_file, cert, key))
    m = client.post_view(ModelView, f"/models/{name}/load", body)
    out.print(f"{m.id} {m.state} in {m.load_time_s or 0:.2f}s (pid {m.pid or '-'})")


@app.command()
def unload(
    name: Annotated[str | None, typer.Argument(help="Model name or alias.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Unload every loaded model.")] = False,
    url: UrlOpt = None,
    config: ConfigOpt = None,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """Unload a model (or --all), giving its memory back."""
    if all_ == (name is not None):
        raise CliError("give a model name or --all")
    client = connect(url, config, tls=ClientTls(ca_file, cert, key))
    if all_:
        names = client.post_view(Unloaded, "/models/unload_all").unloaded
        out.print(f"unloaded {len(names)} model(s){': ' + ', '.join(names) if names else ''}")
        return
    m = client.post_view(ModelView, f"/models/{name}/unload")
    out.print(f"{m.id} {m.state}")


def ttl_left_s(m: ModelView) -> float | None:
    """Seconds until the idle unload; None: never (pinned, or a TTL of 0)."""
    if m.pinned or not m.ttl_s:
        return None
    return max(0.0, round(m.ttl_s - (m.idle_s or 0.0), 1))


def _count(n: Any) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


# Pipeline and storage commands (issue 6): thin commands over hub, daemon, pipeline, disk.
app.command()(pull.pull)
app.add_typer(server.app, name="server")
app.add_typer(keys.app, name="keys")
app.add_typer(nodes.app, name="nodes")  # issue 21: the fleet
app.command()(run.run)
app.command()(run.export)
app.command()(health.health)
app.command()(storage.ls)
app.command()(storage.du)
app.command("clean-cache")(storage.clean_cache)
app.command()(bootstrap.bootstrap)
app.add_typer(config_cmd.app, name="config")
app.command()(logs.logs)
app.add_typer(audit.app, name="audit")  # issue 5: the audit log file
app.command("security-audit")(security_audit)
app.command("analyze")(analyze.analyze_command)  # issue 17: the code analyzer
app.command("mcp")(mcp.mcp)  # issue 16: the MCP server over stdio


def _version(value: bool) -> None:
    if value:
        out.print(f"mlo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    pass


# The original stack's command names (console scripts in pyproject.toml), as `mlo` commands.
ALIASES: dict[str, tuple[str, ...]] = {
    "ml-ls": ("ls",),
    "ml-du": ("du",),
    "ml-clean-cache": ("clean-cache",),
    "ollama-status": ("ps",),
    "ollama-unload": ("unload",),  # with no model name: every model (`--all`)
}


def alias_main() -> None:
    """Entry point of the aliases: `ml-ls ARGS` runs `mlo ls ARGS`."""
    name = Path(sys.argv[0]).name
    args = sys.argv[1:]
    if name == "ollama-unload" and (not args or args[0].startswith("-")) and "--all" not in args:
        args = ["--all", *args]  # `ollama-unload [OPTIONS]`: every model; a name comes first
    sys.argv = ["mlo", *ALIASES[name], *args]
    main()


def main() -> None:
    run_cli(app, CliError)
