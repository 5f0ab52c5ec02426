"""`mlo nodes ls`: the fleet's nodes, from the heartbeats the gateway reads (`/nodes`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ml_offload.cli.client import connect
from ml_offload.cli.common import (
    CaFileOpt,
    CertOpt,
    ConfigOpt,
    KeyOpt,
    UrlOpt,
    human_bytes,
    human_secs,
    out,
)
from ml_offload.client_tls import ClientTls
from ml_offload.wire.native import FleetNodeView, FleetView

app = typer.Typer(help="The fleet's nodes (mlo serve --role node).", no_args_is_help=True)


@app.command("ls")
def ls(
    url: UrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """List the nodes that published heartbeats; a node past its lease is shown gone."""
    data = connect(url, config, tls=ClientTls(ca_file, cert, key)).view(FleetView, "/nodes").data
    if as_json:
        out.print_json(data=[n.model_dump(mode="json") for n in data])
        return
    if not data:
        out.print("no nodes: start one with `mlo serve --role node` on the same database")
        return
    table = Table(
        "NODE", "URL", "STATE", "GPUS", "GPU FREE", "HOST FREE", "SERVES", "LOADED", "QUEUE", "SEEN"
    )
    for n in data:
        table.add_row(*_row(n))
    out.print(table)


def _row(n: FleetNodeView) -> tuple[str, ...]:
    free = sum(d.free_bytes for d in n.devices)
    total = sum(d.total_bytes for d in n.devices)
    return (
        n.name,
        n.url or "-",
        "up" if n.alive else "gone",
        str(len(n.devices)),
        f"{human_bytes(free)} / {human_bytes(total)}" if n.devices else "-",
        human_bytes(n.host_free_bytes),
        ", ".join(n.models) or "-",
        ", ".join(n.loaded) or "-",
        str(n.queue_depth),
        f"{human_secs(n.beat_age_s)} ago",
    )
