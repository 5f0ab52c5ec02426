"""`serve(settings)`: the gateway under uvicorn in this process (what `mlo serve` runs).

The settings are built once by the caller and passed in; nothing travels through `os.environ`.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import Callable
from types import FrameType
from typing import Any

from ml_offload.api.app import build_app
from ml_offload.api.http_protocol import GatewayHttpToolsProtocol, with_header_timeout
from ml_offload.backends.base import ProcessFactory
from ml_offload.config import Settings


def serve(
    settings: Settings,
    factory: ProcessFactory | None = None,
    reread: Callable[[], Settings] | None = None,
) -> None:
    """Run until stopped; uvicorn exits with code 3 (its reason logged) when start-up fails.
    `reread` reads the settings again, for SIGHUP (api/reload.py). A SIGTERM answered by a
    clean shutdown returns (exit status 0, which systemd reads as a clean stop), where uvicorn
    would re-raise it and die by the signal (-15)."""
    import uvicorn

    signal.signal(signal.SIGTERM, _stopped)  # the handler uvicorn restores and re-raises into
    uvicorn.run(
        build_app(settings, factory, reread),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        access_log=False,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=10,
        ws_max_size=settings.server.max_body_bytes,
        **uvicorn_tls(settings),
    )


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do, return normally."""


def uvicorn_tls(settings: Settings) -> dict[str, Any]:
    """uvicorn's protocol and TLS arguments: httptools with JSON answers to broken HTTP and a
    header timeout (api/http_protocol.py); with TLS, the subclass that also passes the client
    certificate to the app (api/tls.py)."""
    tls = settings.security.tls
    timeout_s = settings.server.header_timeout_s
    if tls.cert_file is None:
        return {"http": with_header_timeout(GatewayHttpToolsProtocol, timeout_s)}
    from ml_offload.api.tls import TlsHttpToolsProtocol, TlsWebSocketProtocol

    options: dict[str, Any] = {
        "ssl_certfile": str(tls.cert_file),
        "ssl_keyfile": str(tls.key_file),
        "http": with_header_timeout(TlsHttpToolsProtocol, timeout_s),
        "ws": TlsWebSocketProtocol,
    }
    if tls.client_ca_file is not None:
        options["ssl_ca_certs"] = str(tls.client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
