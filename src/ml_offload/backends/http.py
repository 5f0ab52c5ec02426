"""The one pooled upstream HTTP client (aiohttp: measured faster than httpx, see bench/clients.py).

aiohttp's exceptions are translated into our error tree here, where they enter.

Proxies: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (read once at start, as every HTTP client honours
them) choose a proxy per request; loopback hosts (local engines) always go direct. Not aiohttp's
`trust_env`, which would also send `~/.netrc` credentials and proxy loopback engines.

Engine keys: each engine we start listens with its own random API key (`authorize`); this client
adds it to every request for that engine's address, so nothing else on the machine can use the
engine past the gateway's auth, limits and audit.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import aiohttp

from ml_offload.errors import EngineError, EngineTimeout, EngineUnreachable, safe_url
from ml_offload.wire.body import JSON_HEADERS


class Upstream:
    def __init__(self, *, timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str] = {}
        self._engine_keys: dict[str, str] = {}  # an engine's origin -> its Authorization value
        self._tls: dict[str, ssl.SSLContext] = {}  # an origin -> how to reach it (fleet nodes)

    async def start(self) -> None:
        self._proxies = urllib.request.getproxies_environment()
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False, trust_env=False
        )

    def authorize(self, base_url: str, api_key: str) -> None:
        """Send `api_key` with every request to the engine at `base_url` (until `forget`)."""
        self._engine_keys[_origin(base_url)] = f"Bearer {api_key}"

    def use_tls(self, base_url: str, context: ssl.SSLContext) -> None:
        """Reach `base_url` with `context` (the CA it is trusted by, the certificate we show)
        rather than the system's trust store."""
        self._tls[_origin(base_url)] = context

    def _ssl(self, url: str) -> ssl.SSLContext | bool:
        return self._tls.get(_origin(url), True) if self._tls else True

    def forget(self, base_url: str) -> None:
        self._engine_keys.pop(_origin(base_url), None)

    def _headers(self, url: str, headers: Mapping[str, str]) -> Mapping[str, str]:
        key = self._engine_keys.get(_origin(url)) if self._engine_keys else None
        return headers if key is None else {**headers, "Authorization": key}

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() was not called"
        return self._session

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str] = JSON_HEADERS
    ) -> tuple[int, bytes]:
        try:
            async with await self._send("POST", url, body, headers) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, url) from None

    async def open(
        self, url: str, body: bytes, headers: Mapping[str, str] = JSON_HEADERS
    ) -> aiohttp.ClientResponse:
        """Send a request and return the response with its body unread (for streaming)."""
        try:
            return await self._send("POST", url, body, headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, url) from None

    async def get_json_bytes(self, url: str) -> tuple[int, bytes]:
        try:
            async with await self._send("GET", url, None, {}) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, url) from None

    async def _send(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """The request sent, its response's head read. Sent once more, on another connection,
        when it could not be written (a pooled keep-alive connection the server had just closed:
        nothing reached the server), and, to an engine of ours, when the connection was dropped
        before any answer (the same race seen from the reading side; at worst the engine
        computes twice, where a cloud provider would bill twice)."""
        proxy = self.proxy_for(url) if self._proxies else None
        own = _origin(url) in self._engine_keys
        headers = self._headers(url, headers)
        tls = self._ssl(url)
        for again in (True, False):
            try:
                return await self.session.request(
                    method, url, data=body, headers=headers, proxy=proxy, ssl=tls
                )
            except aiohttp.ClientConnectionError as exc:
                if not (again and (_not_sent(exc) or (own and _dropped(exc)))):
                    raise
        raise AssertionError("unreachable")

    def proxy_for(self, url: str) -> str | None:
        """The proxy the environment names for `url`; None for loopback and NO_PROXY hosts."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # untyped
        if _loopback(host) or bypass(host, self._proxies):
            return None
        return self._proxies.get(parts.scheme)


_NOT_SENT = ("Can not write request body", "Failed to send bytes into the underlying connection")


def _not_sent(exc: aiohttp.ClientConnectionError) -> bool:
    """aiohttp's words for a request it could not write (its exceptions do not say otherwise)."""
    return any(words in str(exc) for words in _NOT_SENT)


def _dropped(exc: aiohttp.ClientConnectionError) -> bool:
    """The server closed or reset an open connection (not: refused a new one)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return True
    connect = isinstance(exc, aiohttp.ClientConnectorError)
    return isinstance(exc, aiohttp.ClientOSError) and not connect and exc.errno in _RESETS


_RESETS = (errno.ECONNRESET, errno.EPIPE)


def _origin(url: str) -> str:
    """`scheme://host:port` of a URL (string slicing: this runs on every engine request)."""
    end = url.find("/", url.find("//") + 2)
    return url if end < 0 else url[:end]


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def sse_data(resp: aiohttp.ClientResponse, url: str) -> AsyncIterator[bytes]:
    """The `data:` payloads of an SSE response, one per event, as they arrive."""
    try:
        async for line in resp.content:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise translate(exc, url) from None


def translate(exc: BaseException, url: str) -> EngineError:
    """The engine's failure as ours; no credential in `url` (or in `exc`) is shown."""
    url = safe_url(url)
    if isinstance(exc, asyncio.TimeoutError):
        return EngineTimeout(f"the engine at {url} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return EngineUnreachable(f"cannot reach the engine at {url}: {safe_url(exc)}")
    cause = safe_url(exc) or type(exc).__name__
    return EngineError(f"the engine at {url} closed the connection: {cause}")
