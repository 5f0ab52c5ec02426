"""The TLS and bind options `mlo serve` and `mlo server start` share, and what uvicorn gets."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any

import typer

from ml_offload.config import Settings

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

_TLS_ENV = "MLO_SECURITY__TLS__"


def security_env(
    cert: Path | None, key: Path | None, client_ca: Path | None, allow_insecure: bool
) -> dict[str, str]:
    """The flags as `MLO_*` variables, so the gateway (and a daemon's child) reads them."""
    env = {
        f"{_TLS_ENV}{name}": str(path.resolve())
        for name, path in (("CERT_FILE", cert), ("KEY_FILE", key), ("CLIENT_CA_FILE", client_ca))
        if path is not None
    }
    if allow_insecure:
        env["MLO_SECURITY__ALLOW_INSECURE_BIND"] = "true"
    return env


def uvicorn_tls(settings: Settings) -> dict[str, Any]:
    """uvicorn's protocol and TLS arguments: with TLS, the protocols that pass the client
    certificate to the app (api/tls.py); without, uvicorn's own httptools (the hot path)."""
    tls = settings.security.tls
    if tls.cert_file is None:
        return {"http": "httptools"}
    options: dict[str, Any] = {
        "ssl_certfile": str(tls.cert_file),
        "ssl_keyfile": str(tls.key_file),
        "http": "ml_offload.api.tls:TlsHttpToolsProtocol",
        "ws": "ml_offload.api.tls:TlsWebSocketProtocol",
    }
    if tls.client_ca_file is not None:
        options["ssl_ca_certs"] = str(tls.client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
