"""`mlo bootstrap`: what this machine has for running models, and what to install."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ml_offload.bootstrap import diagnose, probe
from ml_offload.cli.client import CliError
from ml_offload.cli.common import ConfigOpt, JsonOpt, out, settings_for

_STYLE = {"ok": "green", "warn": "yellow", "missing": "red"}


def bootstrap(
    check: Annotated[
        bool, typer.Option("--check", help="Exit non-zero when something is missing.")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Detect GPUs (sm_XX), the CUDA driver and the engine; say what to install.

    Looks for NVIDIA GPUs and their architecture, the CUDA version the driver
    supports, the xllamacpp build (CPU or GPU) and a llama-server binary, and
    prints the exact command that gets a GPU build.
    """
    settings = settings_for(config)
    machine = probe(settings.engine.llama_server_bin)
    findings = diagnose(machine)
    if as_json:
        out.print_json(data={"machine": asdict(machine), "findings": [asdict(f) for f in findings]})
    else:
        table = Table("CHECK", "STATUS", "FOUND")
        for f in findings:
            table.add_row(f.name, Text(f.status, style=_STYLE[f.status]), f.detail)
        out.print(table)
        for f in findings:
            if f.fix:
                out.print(f"{f.name}: {f.fix}")
    missing = [f.name for f in findings if f.status == "missing"]
    if check and missing:
        raise CliError(f"missing: {', '.join(missing)} (see the fixes above)")
