"""`mlo keys create|ls|revoke`: API keys, straight in the configured database.

No gateway is needed; every gateway sharing the database sees a change on its next request.
The key is printed once, at creation (alone on stdout, so `KEY=$(mlo keys create ...)` works);
only a hash of its secret is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from ml_offload.cli.common import ConfigOpt, JsonOpt, err, out, settings_for

if TYPE_CHECKING:
    from ml_offload.domain import ApiKey
    from ml_offload.security.keys import KeyStore

T = TypeVar("T")

app = typer.Typer(help="API keys: create, list, revoke (in the configured database).")


def _with_store(config: Path | None, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run `action(KeyStore)` on the database the config names."""
    from ml_offload.services import open_key_store

    settings = settings_for(config)

    async def run() -> T:
        async with open_key_store(settings) as store:
            return await action(store)

    return asyncio.run(run())


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M")


def _split(values: list[str] | None) -> list[str]:
    """`--models a --models b` or `--models a,b`."""
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="Allowed models: names, aliases or `backend:*` (repeat or comma-separate). "
            "Default: every model.",
        ),
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.", min=1)] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.", min=1)] = None,
    expires: Annotated[
        str | None, typer.Option(help="When it stops working: 30d, 12h, or an ISO date.")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May use the admin endpoints.")] = False,
    cert_subject: Annotated[
        str | None, typer.Option(help="Only with a client certificate of this subject.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it once (only a hash of it is stored)."""
    from ml_offload.security.keys import parse_expiry

    expires_at = parse_expiry(expires) if expires else None
    created = _with_store(
        config,
        lambda store: store.create(
            name,
            models=_split(models),
            admin=admin,
            rpm=rpm,
            tpm=tpm,
            expires_at=expires_at,
            cert_subject=cert_subject,
        ),
    )
    if as_json:
        out.print_json(data={**_row(created.key), "key": created.secret})
        return
    out.print(created.secret)
    err.print(
        f"created key {created.key.id} ({created.key.name}); it is shown only now: keep it safe"
    )


@app.command("ls")
def ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List keys (never their secrets)."""
    keys = _with_store(config, lambda store: store.list())
    if as_json:
        out.print_json(data=[_row(k) for k in keys])
        return
    if not keys:
        out.print("no keys (`mlo keys create --name NAME` makes one)")
        return
    table = Table("ID", "NAME", "MODELS", "ADMIN", "RPM", "TPM", "EXPIRES", "REVOKED", "CREATED")
    for k in keys:
        table.add_row(
            k.id,
            k.name,
            ", ".join(k.models) or "all",
            "yes" if k.admin else "no",
            str(k.rpm or "-"),
            str(k.tpm or "-"),
            _when(k.expires_at),
            _when(k.revoked_at),
            _when(k.created_at),
        )
    out.print(table)


@app.command("revoke")
def revoke(
    id_or_name: Annotated[str, typer.Argument(help="The key's id, or its name.")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a key: every gateway sharing the database refuses it from its next request."""
    key = _with_store(config, lambda store: store.revoke(id_or_name))
    out.print(f"revoked key {key.id} ({key.name})")


def _row(key: ApiKey) -> dict[str, Any]:
    return {**asdict(key), "models": list(key.models)}
