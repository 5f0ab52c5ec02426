"""The upstream client goes through HTTP(S)_PROXY for remote hosts, never for loopback or NO_PROXY.

A tiny forward proxy written here (absolute-form requests, as clients send to an HTTP proxy)
records what passes through it and forwards to a loopback upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from ml_offload.backends.http import Upstream
from ml_offload.errors import EngineError

ANSWER = b'{"ok":true}'


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
    await writer.drain()
    writer.close()


class Proxy:
    """Forwards each absolute-form request to the upstream port, whatever host it names."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.seen: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await _read_request(reader)
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
        self.seen.append(f"{method} {target}")
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        path = urlsplit(target).path or "/"
        rest = head.split(b"\r\n", 1)[1].replace(b"Connection: keep-alive", b"Connection: close")
        up_w.write(f"{method} {path} HTTP/1.1\r\n".encode() + rest + body)
        await up_w.drain()
        writer.write(await up_r.read())
        await writer.drain()
        writer.close()
        up_w.close()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[int, Proxy, int]]:
    up = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    proxy = Proxy(up_port)
    px = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    yield up_port, proxy, px.sockets[0].getsockname()[1]
    up.close()
    px.close()


async def test_remote_hosts_go_through_the_proxy_loopback_stays_direct(
    servers: tuple[int, Proxy, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    up_port, proxy, proxy_port = servers
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        for key in (name, name.lower()):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    client = Upstream(timeout_s=10)
    await client.start()
    try:
        remote = f"http://cloud.example:{up_port}/v1/chat/completions"
        assert await client.post(remote, b"{}") == (200, ANSWER)  # only the proxy can resolve it
        assert proxy.seen == [f"POST {remote}"]
        local = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        assert await client.post(local, b"{}") == (200, ANSWER)
        assert await client.get_json_bytes(f"http://localhost:{up_port}/health") == (200, ANSWER)
        assert len(proxy.seen) == 1  # the loopback engine was reached directly
        with pytest.raises(EngineError):  # NO_PROXY: tried directly, and the name does not resolve
            await client.post(f"http://direct.example:{up_port}/v1", b"{}")
        assert len(proxy.seen) == 1
        assert client.proxy_for("https://api.openai.com/v1") == "http://proxy.internal:3128"
        assert client.proxy_for("http://[::1]:8080/v1") is None
    finally:
        await client.close()


async def test_without_proxy_settings_nothing_is_proxied(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        for key in (name, name.lower()):
            monkeypatch.delenv(key, raising=False)
    client = Upstream(timeout_s=10)
    await client.start()
    try:
        assert client.proxy_for("https://api.openai.com/v1") is None
    finally:
        await client.close()
