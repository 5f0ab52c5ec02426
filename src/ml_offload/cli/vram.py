"""`mlo vram`: devices, memory and where each loaded model sits, from GET /vram/status."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ml_offload.cli.client import GatewayClient, gateway_url

out = Console()


def _gib(n: Any) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def vram(
    url: Annotated[str | None, typer.Option("--url", help="Gateway address.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """GPU devices and memory, and where each loaded model is placed."""
    data = GatewayClient(gateway_url(url)).get("/vram/status")
    if as_json:
        out.print_json(data=data)
        return
    out.print(f"monitor: {data['monitor']} (reserve {_gib(data['reserve_bytes'])} per device)")
    devices = Table("GPU", "NAME", "TOTAL", "USED", "FREE", "UTIL", "MODELS")
    for d in data["devices"]:
        util = "-" if d["utilization_pct"] is None else f"{d['utilization_pct']:.0f}%"
        devices.add_row(
            str(d["index"]),
            d["name"],
            _gib(d["total_bytes"]),
            _gib(d["used_bytes"]),
            _gib(d["free_bytes"]),
            util,
            ", ".join(d["models"]) or "-",
        )
    cpu = data["cpu"]
    devices.add_row(
        "cpu",
        f"{cpu['cores']} cores",
        _gib(cpu["total_bytes"]),
        _gib(cpu["used_estimate_bytes"]),
        _gib(cpu["budget_bytes"] - cpu["used_estimate_bytes"]),
        "-",
        "(budget)",
    )
    out.print(devices)
    models = Table("MODEL", "STATE", "LAYERS ON GPU", "GPU (EST.)", "HOST (EST.)", "MEASURED")
    for m in data["models"]:
        gpu = sum(m["device_bytes"].values())
        where = ", ".join(f"gpu{i}: {_gib(b)}" for i, b in m["device_bytes"].items()) or "-"
        models.add_row(
            m["name"],
            m["state"],
            f"{m['gpu_layers'] or 0}/{m['layers']}",
            f"{_gib(gpu)} ({where})" if gpu else "-",
            _gib(m["host_bytes"]),
            _gib(m["measured_bytes"]),
        )
    out.print(models)
