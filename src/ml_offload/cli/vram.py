"""`mlo vram`: devices, memory and where each loaded model sits, from GET /vram/status."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ml_offload.cli.client import connect
from ml_offload.cli.common import CaFileOpt, CertOpt, ConfigOpt, KeyOpt, UrlOpt, human_bytes, out
from ml_offload.client_tls import ClientTls
from ml_offload.wire.native import MemoryView


def vram(
    url: UrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
    ca_file: CaFileOpt = None,
    cert: CertOpt = None,
    key: KeyOpt = None,
) -> None:
    """GPU devices and memory, and where each loaded model is placed."""
    data = connect(url, config, tls=ClientTls(ca_file, cert, key)).view(MemoryView, "/vram/status")
    if as_json:
        out.print_json(data=data.model_dump(mode="json"))
        return
    out.print(f"monitor: {data.monitor} (reserve {human_bytes(data.reserve_bytes)} per device)")
    devices = Table("GPU", "NAME", "TOTAL", "USED", "FREE", "UTIL", "MODELS")
    for d in data.devices:
        util = "-" if d.utilization_pct is None else f"{d.utilization_pct:.0f}%"
        devices.add_row(
            str(d.index),
            d.name,
            human_bytes(d.total_bytes),
            human_bytes(d.used_bytes),
            human_bytes(d.free_bytes),
            util,
            ", ".join(d.models) or "-",
        )
    cpu = data.cpu
    devices.add_row(
        "cpu",
        f"{cpu.cores} cores",
        human_bytes(cpu.total_bytes),
        human_bytes(cpu.used_estimate_bytes),
        human_bytes(cpu.left_bytes),
        "-",
        "(budget)",
    )
    out.print(devices)
    models = Table("MODEL", "STATE", "LAYERS ON GPU", "GPU (EST.)", "HOST (EST.)", "MEASURED")
    for m in data.models:
        gpu = sum(m.device_bytes.values())
        where = ", ".join(f"gpu{i}: {human_bytes(b)}" for i, b in m.device_bytes.items()) or "-"
        models.add_row(
            m.name,
            m.state,
            f"{m.gpu_layers or 0}/{m.layers}",
            f"{human_bytes(gpu)} ({where})" if gpu else "-",
            human_bytes(m.host_bytes),
            human_bytes(m.measured_bytes),
        )
    out.print(models)
