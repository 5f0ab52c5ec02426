"""`mlo ls`, `mlo du`, `mlo clean-cache`: models and files on disk (no gateway needed).

The storage modules (SQLAlchemy, numpy through gguf) are imported by the commands that use
them, so that `mlo --help` and the other commands start fast."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ml_offload.cli.client import CliError
from ml_offload.cli.common import (
    ConfigOpt,
    JsonOpt,
    human_bytes,
    out,
    registry_files,
    settings_for,
    state_dir,
)
from ml_offload.daemon import Daemon

if TYPE_CHECKING:
    from ml_offload.config import Settings
    from ml_offload.storage.disk import DiskSpace

_DAY_S = 86_400.0


def ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List GGUF models on disk: those in the model folder, and the registry's files elsewhere
    (the demo model, config models); size, quantization, in the registry or not.

    `mlo models ls` asks the running gateway instead.
    """
    from ml_offload.storage.disk import list_models

    settings = settings_for(config)
    folder = settings.storage.models_path
    known = registry_files(settings)
    rows = [
        {
            **asdict(m),
            "path": str(m.path),
            "registered": None if known is None else Path(os.path.realpath(m.path)) in known,
        }
        for m in list_models(folder)
    ]
    listed = {Path(os.path.realpath(r["path"])) for r in rows}
    rows += _registered_elsewhere(settings, known, listed)
    if as_json:
        out.print_json(data={"folder": str(folder), "models": rows})
        return
    if not rows:
        out.print(f"no models in {folder} (`mlo pull` fetches some)")
        return
    table = Table("NAME", "QUANT", "SIZE", "SHARDS", "IN REGISTRY", "PATH", title=str(folder))
    for r in rows:
        reg = "?" if r["registered"] is None else ("yes" if r["registered"] else "no")
        size = human_bytes(r["size_bytes"])
        table.add_row(r["name"], r["quantization"] or "-", size, str(r["shards"]), reg, r["path"])
    out.print(table)
    if known is None:
        out.print("IN REGISTRY ?: no registry yet; the gateway builds it on its first start")


def _registered_elsewhere(
    settings: Settings, known: dict[Path, Any] | None, listed: set[Path]
) -> list[dict[str, Any]]:
    """Local models served from outside the model folder: the registry's, or with no registry
    yet, the bundled demo model the gateway will register."""
    from ml_offload.gguf import demo_model_path
    from ml_offload.registry import DEMO_MODEL_NAME

    if known is None:
        demo = demo_model_path() if settings.demo_model else None
        known = {Path(os.path.realpath(demo)): None} if demo is not None else {}
    rows = []
    for path, spec in known.items():
        if path in listed or not path.is_file():
            continue
        info = spec.info if spec is not None else None
        rows.append(
            {
                "name": spec.name if spec is not None else DEMO_MODEL_NAME,
                "path": str(path),
                "size_bytes": path.stat().st_size,
                "shards": 1,
                "quantization": info.quantization if info else None,
                "registered": spec is not None or None,
            }
        )
    return rows


def du(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Exit non-zero when free space is below storage.low_disk_bytes."
        ),
    ] = False,
) -> None:
    """Show disk use by folder and by model, and the free space left.

    `--check` is the storage monitor (the systemd timer `ml-storage-monitor`).
    """
    from ml_offload.storage.disk import disk_space, list_models, tree_size

    settings = settings_for(config)
    storage = settings.storage
    folders = {
        "models": storage.models_path,
        "download records": storage.models_path / ".cache",
        "engine logs": storage.logs_path,
        "registry": storage.data_dir / "registry.db",
        "daemon (pid, logs)": state_dir(),
    }
    usage: list[dict[str, Any]] = [
        {"what": what, "path": str(path), "bytes": tree_size(path) if path.exists() else 0}
        for what, path in folders.items()
    ]
    per_model: list[dict[str, Any]] = [
        {"model": m.name, "path": str(m.path), "bytes": m.size_bytes}
        for m in sorted(list_models(storage.models_path), key=lambda m: -m.size_bytes)
    ]
    space = disk_space(storage.models_path, storage.low_disk_bytes)
    free = {
        "path": str(space.path),
        "free_bytes": space.free_bytes,
        "total_bytes": space.total_bytes,
        "low": space.low,
    }
    if as_json:
        out.print_json(data={"folders": usage, "models": per_model, "disk": free})
    else:
        _print_du(usage, per_model, space, storage.models_path)
    if check and space.low:
        raise CliError(
            f"low disk space: {human_bytes(space.free_bytes)} free on the disk of "
            f"{storage.models_path} (storage.low_disk_bytes = "
            f"{human_bytes(storage.low_disk_bytes)}); free some with `mlo clean-cache`"
        )


def _print_du(
    usage: list[dict[str, Any]], per_model: list[dict[str, Any]], space: DiskSpace, models: Path
) -> None:
    table = Table("WHAT", "SIZE", "PATH")
    for u in usage:
        table.add_row(u["what"], human_bytes(u["bytes"]), u["path"])
    for m in per_model:
        table.add_row(f"  {m['model']}", human_bytes(m["bytes"]), m["path"])
    out.print(table)
    low = " (LOW: below storage.low_disk_bytes)" if space.low else ""
    out.print(
        f"free: {human_bytes(space.free_bytes)} of {human_bytes(space.total_bytes)} "
        f"on the disk of {models}{low}"
    )


def clean_cache(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", "-n", help="Only list what would be deleted.")
    ] = False,
    older_than: Annotated[
        float, typer.Option(help="Logs untouched this many days are stale.", min=0)
    ] = 7.0,
    config: ConfigOpt = None,
) -> None:
    """Delete partial downloads, orphaned download records and stale logs.

    Model files themselves are never deleted.
    """
    from ml_offload.storage.disk import find_garbage, remove

    settings = settings_for(config)
    running = Daemon(state_dir()).running()
    keep = [Path(running.log_path)] if running else []
    garbage = find_garbage(
        settings.storage.models_path,
        [settings.storage.logs_path, state_dir()],
        max_log_age_s=older_than * _DAY_S,
        keep=keep,
    )
    if not garbage:
        out.print("nothing to clean")
        return
    for g in garbage:
        verb = "would delete" if dry_run else "delete"
        out.print(f"{verb} {g.path} ({g.reason}, {human_bytes(g.size_bytes)})")
    total = sum(g.size_bytes for g in garbage)
    if dry_run:
        out.print(f"{len(garbage)} files, {human_bytes(total)} (dry run: nothing deleted)")
        return
    freed = remove(garbage)
    out.print(f"deleted {len(garbage)} files, {human_bytes(freed)} freed")
