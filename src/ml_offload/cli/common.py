"""Helpers shared by the pipeline and storage commands: consoles, settings, number formats."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from ml_offload.client_tls import CA_BUNDLE_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV
from ml_offload.config import CONFIG_ENV, Settings, load_settings, xdg_dir
from ml_offload.errors import MloError
from ml_offload.wire.native import DeviceView

# No markup: paths, model names and error text print as they are (brackets included).
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help=f"TOML config file (or ${CONFIG_ENV}).")
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url", help="Gateway address (default: $MLO_URL, the daemon's, then the config's)."
    ),
]
CaFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        envvar=CA_BUNDLE_ENV,
        help="Trust the gateway's certificate when this CA bundle (PEM) signed it.",
        show_default=False,
    ),
]
CertOpt = Annotated[
    Path | None,
    typer.Option(
        "--cert",
        envvar=CLIENT_CERT_ENV,
        help="Mutual TLS: present this client certificate (PEM).",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar=CLIENT_KEY_ENV,
        help="The client certificate's private key (PEM).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TrackOpt = Annotated[
    bool,
    typer.Option("--track", help="Log parameters and metrics to MLflow (MLFLOW_TRACKING_URI)."),
]


def settings_for(config: Path | None) -> Settings:
    return load_settings(config)


def state_dir() -> Path:
    """Where the daemon keeps its pid and log files (`$XDG_STATE_HOME/ml-offload`)."""
    return xdg_dir("state")


def human_bytes(n: Any) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def human_secs(s: Any) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def registry_files(settings: Settings) -> dict[Path, Any] | None:
    """The registry's local models by their file (real path); None when there is no registry
    yet (it is not created just to answer) or it cannot be read."""
    storage = settings.storage
    if storage.database_url is None and not (storage.data_dir / "registry.db").exists():
        return None
    try:
        specs = asyncio.run(_registry_specs(settings))
    except MloError:
        return None
    return {Path(os.path.realpath(s.path)): s for s in specs if s.path is not None}


async def _registry_specs(settings: Settings) -> list[Any]:
    from ml_offload.services import open_registry

    async with open_registry(settings, scan=False) as registry:
        return await registry.stored()


def device_summary(device: DeviceView) -> tuple[str, str, str, str]:
    """(name, free, total, utilization) of a device from `/vram/status`."""
    util = device.utilization_pct
    return (
        f"{device.index}: {device.name}",
        human_bytes(device.free_bytes),
        human_bytes(device.total_bytes),
        "-" if util is None else f"{util:.0f}%",
    )


def warn_if_low_disk(settings: Settings) -> None:
    """Log a warning at start-up when the disk of the data folder is low on space."""
    from ml_offload.storage.disk import disk_space

    space = disk_space(settings.storage.data_dir, settings.storage.low_disk_bytes)
    if space.low:
        logging.getLogger("ml_offload").warning(
            "low disk space: %s free on the disk of %s (storage.low_disk_bytes = %s); "
            "see `mlo du` and `mlo clean-cache`",
            human_bytes(space.free_bytes),
            settings.storage.data_dir,
            human_bytes(settings.storage.low_disk_bytes),
        )


HELP = "ml-offload: one secure endpoint in front of your local and cloud LLMs."


def run_cli(app: typer.Typer, *errors: type[Exception]) -> None:
    """Run a command tree; a MloError (exit 2) or one of `errors` (exit 1) is one red line."""
    caught: tuple[type[Exception], ...] = (MloError, *errors)
    try:
        app()
    except caught as exc:
        err.print(Text.assemble(("error:", "red"), f" {exc}"))
        sys.exit(2 if isinstance(exc, MloError) else 1)
    except KeyboardInterrupt:
        sys.exit(130)
