"""uvicorn protocols that hand the client certificate to the app (ASGI TLS extension).

uvicorn does not fill `scope["extensions"]["tls"]`; these subclasses read the verified peer
certificate once per connection (the handshake is over when `connection_made` runs) and wrap the
connection's app so each request's scope carries it. `mlo serve` uses them only with TLS on; the
HTTP one builds on the gateway's httptools protocol (JSON for broken HTTP, header timeout).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ml_offload.api.http_protocol import GatewayHttpToolsProtocol

# RFC 4514 section 3: short names for the attribute types every implementation knows.
_SHORT_NAMES = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def _escape(value: str) -> str:
    """RFC 4514 section 2.4: escape specials anywhere, `#` or space first, space last."""
    last = len(value) - 1
    return "".join(_escape_char(c, i == 0, i == last) for i, c in enumerate(value))


def _escape_char(c: str, first: bool, last: bool) -> str:
    if c == "\0":
        return "\\00"
    if c in '"+,;<>\\' or (first and c in "# ") or (last and c == " "):
        return "\\" + c
    return c


def rfc4514_subject(cert: dict[str, Any]) -> str | None:
    """The subject of `SSLSocket.getpeercert()` as an RFC 4514 string (most specific RDN first,
    `+` inside a multi-valued RDN); None without a verified certificate."""
    rdns = cert.get("subject") or ()
    parts = [
        "+".join(f"{_SHORT_NAMES.get(k, k)}={_escape(v)}" for k, v in rdn) for rdn in reversed(rdns)
    ]
    return ",".join(parts) or None


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection, or None for plain TCP."""
    sslobj: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": rfc4514_subject(sslobj.getpeercert() or {}),
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(sslobj.version() or ""),
        "cipher_suite": None,
    }


class _WithTls:
    """The connection's app, with the TLS extension added to each scope."""

    def __init__(self, app: ASGIApp, ext: dict[str, Any]) -> None:
        self.app = app
        self.ext = ext

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("extensions", {})["tls"] = self.ext
        await self.app(scope, receive, send)


def _wrap(protocol: Any, transport: asyncio.BaseTransport) -> None:
    ext = tls_extension(transport)
    if ext is not None:
        protocol.app = _WithTls(protocol.app, ext)


class TlsHttpToolsProtocol(GatewayHttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _wrap(self, transport)


class TlsH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _wrap(self, transport)


class TlsWebSocketProtocol(WebSocketsSansIOProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _wrap(self, transport)
