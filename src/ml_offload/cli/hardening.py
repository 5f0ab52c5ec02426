"""The TLS and bind options `mlo serve` and `mlo server start` share, as settings overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

TlsCertOpt = Annotated[
    Path | None,
    typer.Option("--tls-cert", help="Serve HTTPS with this PEM certificate (security.tls)."),
]
TlsKeyOpt = Annotated[
    Path | None, typer.Option("--tls-key", help="The certificate's PEM private key.")
]
TlsClientCaOpt = Annotated[
    Path | None,
    typer.Option(
        "--tls-client-ca",
        help="Mutual TLS: refuse clients without a certificate from this CA (PEM).",
    ),
]
AllowInsecureOpt = Annotated[
    bool,
    typer.Option(
        "--allow-insecure",
        help="Run without auth on a non-loopback address (security.allow_insecure_bind).",
    ),
]


def serve_overrides(
    *,
    host: str | None = None,
    port: int | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    client_ca: Path | None = None,
    allow_insecure: bool = False,
) -> dict[str, Any]:
    """The flags as settings that override the config file's and the environment's."""
    server = {name: v for name, v in (("host", host), ("port", port)) if v is not None}
    files = (("cert_file", cert), ("key_file", key), ("client_ca_file", client_ca))
    tls = {name: str(path.resolve()) for name, path in files if path is not None}
    security: dict[str, Any] = {"tls": tls} if tls else {}
    if allow_insecure:
        security["allow_insecure_bind"] = True
    return {name: part for name, part in (("server", server), ("security", security)) if part}
