"""`mlo pull`: download a GGUF model from Hugging Face into the model folder."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ml_offload.cli.client import CliError
from ml_offload.cli.common import ConfigOpt, err, human_bytes, out, settings_for, state_dir
from ml_offload.config import Settings
from ml_offload.daemon import Daemon
from ml_offload.hub import CATALOGUE, HubClient, parse_ref


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
    _register(settings, result.files[0].path)


def _register(settings: Settings, path: Path) -> None:
    if not settings.scan_models_dir:
        out.print("not registered: scan_models_dir is off; declare it under [[models]]")
        return
    name = asyncio.run(_refresh(settings, path))
    if name is None:
        out.print(f"not registered: {path.name} is not a readable GGUF model (see the warning)")
        return
    out.print(f"registered as {name}")
    if Daemon(state_dir()).running() is not None:
        out.print("the running gateway serves it after `mlo server restart`")


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
