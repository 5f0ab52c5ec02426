"""`mlo pull`: download a GGUF model from Hugging Face into the model folder."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ml_offload.cli.client import CliError, Unreachable, connect
from ml_offload.cli.common import ConfigOpt, err, human_bytes, out, settings_for
from ml_offload.config import Settings
from ml_offload.hub import CATALOGUE, HubClient, parse_ref
from ml_offload.wire.native import Rescanned


def pull(
    ref: Annotated[
        str | None,
        typer.Argument(
            help="REPO (owner/name), REPO:FILE.gguf, REPO:QUANT (e.g. Q8_0), or an alias "
            "such as llama-3.1-8b or llama-3.1-8b:Q8_0.",
            show_default=False,
        ),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the built-in aliases.")] = False,
    revision: Annotated[str, typer.Option(help="Branch, tag or commit.")] = "main",
    config: ConfigOpt = None,
) -> None:
    """Download a GGUF model from Hugging Face into the model folder.

    Without a quantization the repository's Q4_K_M file is taken (or its only
    GGUF); split models come with every shard. Downloads resume after a dropped
    connection and are checked against the Hub's sha256, then the model is
    added to the registry. HF_TOKEN is sent for private or gated repositories;
    HF_ENDPOINT points to a mirror.
    """
    if list_:
        _print_catalogue()
        return
    if ref is None:
        raise CliError("give a model to pull: REPO[:FILE|:QUANT] or an alias (see mlo pull --list)")
    settings = settings_for(config)
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    client = HubClient(endpoint=os.environ.get("HF_ENDPOINT"), token=token)
    models_dir = settings.storage.models_path
    models_dir.mkdir(parents=True, exist_ok=True)
    result = client.pull(
        parse_ref(ref), models_dir, revision=revision, say=lambda m: err.print(f"pulling {m}")
    )
    for f in result.files:
        how = "sha256 verified" if f.downloaded and f.checksum else "already present"
        out.print(f"{f.path} ({human_bytes(f.size_bytes)}, {how})")
    _register(settings, result.files[0].path, config)


def _register(settings: Settings, path: Path, config: Path | None) -> None:
    if not settings.scan_models_dir:
        out.print("not registered: scan_models_dir is off; declare it under [[models]]")
        return
    name = asyncio.run(_refresh(settings, path))
    if name is None:
        out.print(f"not registered: {path.name} is not a readable GGUF model (see the warning)")
        return
    out.print(f"registered as {name}")
    _tell_gateway(config)


def _tell_gateway(config: Path | None) -> None:
    """Ask the running gateway to rescan, so it serves the model now (none running: it reads
    the folder when it starts)."""
    try:
        found = connect(None, config, timeout_s=60).post_view(Rescanned, "/models/rescan")
    except Unreachable:
        return
    except CliError as exc:
        err.print(f"the running gateway was not told to rescan: {exc}; run `mlo models rescan`")
        return
    out.print(f"the gateway serves it now: {rescan_line(found)}")


def rescan_line(found: Rescanned) -> str:
    said = [
        f"{what} {', '.join(names)}"
        for what, names in (
            ("added", found.added),
            ("removed", found.removed),
            ("changed", found.changed),
        )
        if names
    ]
    return f"{found.models} models" + (f" ({'; '.join(said)})" if said else ", none new")


async def _refresh(settings: Settings, path: Path) -> str | None:
    from ml_offload.services import open_registry

    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    async with open_registry(settings) as registry:
        real = path.resolve()
        return next((s.name for s in registry.all() if s.path and s.path.resolve() == real), None)


def _print_catalogue() -> None:
    table = Table("ALIAS", "REPOSITORY", "QUANT", "MODEL")
    for alias, entry in sorted(CATALOGUE.items()):
        table.add_row(alias, entry.repo, entry.quant, entry.about)
    out.print(table)
    out.print("pull ALIAS, ALIAS:QUANT (e.g. llama-3.1-8b:Q8_0), REPO or REPO:QUANT")
