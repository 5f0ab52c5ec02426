"""`serve(settings)`: the gateway under uvicorn in this process (what `mlo serve` runs).

The settings are built once by the caller and passed in; nothing travels through `os.environ`.
"""

from __future__ import annotations

import ssl
from typing import Any

from ml_offload.api.app import build_app
from ml_offload.backends.base import ProcessFactory
from ml_offload.config import Settings


def serve(settings: Settings, factory: ProcessFactory | None = None) -> None:
    """Run until stopped; uvicorn exits with code 3 (its reason logged) when start-up fails."""
    import uvicorn

    uvicorn.run(
        build_app(settings, factory),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        access_log=False,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=10,
        ws_max_size=settings.server.max_body_bytes,
        **uvicorn_tls(settings),
    )


def uvicorn_tls(settings: Settings) -> dict[str, Any]:
    """uvicorn's protocol and TLS arguments: with TLS, the protocols that pass the client
    certificate to the app (api/tls.py); without, uvicorn's own httptools (the hot path)."""
    tls = settings.security.tls
    if tls.cert_file is None:
        return {"http": "httptools"}
    from ml_offload.api.tls import TlsHttpToolsProtocol, TlsWebSocketProtocol

    options: dict[str, Any] = {
        "ssl_certfile": str(tls.cert_file),
        "ssl_keyfile": str(tls.key_file),
        "http": TlsHttpToolsProtocol,
        "ws": TlsWebSocketProtocol,
    }
    if tls.client_ca_file is not None:
        options["ssl_ca_certs"] = str(tls.client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
