"""The upstream client sends a request once more only when aiohttp could not write it (a pooled
connection the server had just closed); one that was written is never sent twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from ml_offload.backends.http import Upstream, _not_sent
from ml_offload.errors import EngineError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def client() -> AsyncIterator[Upstream]:
    upstream = Upstream(timeout_s=10)
    await upstream.start()
    yield upstream
    await upstream.close()


async def serve(handler: Handler) -> tuple[str, asyncio.Server, list[int]]:
    """A loopback server that counts its connections: `handler(reader, writer)` per one."""
    connections: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        await handler(reader, writer)

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/chat/completions", server, connections


def test_only_a_request_aiohttp_could_not_write_counts_as_unsent() -> None:
    """The two errors aiohttp raises when the request did not go out (as it builds them), and
    the ones after it went out, which must not be resent (the server may have acted on it)."""
    url = "http://127.0.0.1:9/v1/chat/completions"
    assert _not_sent(aiohttp.ClientOSError(None, f"Can not write request body for {url}"))
    assert _not_sent(
        aiohttp.ClientConnectionError(
            "Failed to send bytes into the underlying connection <conn>: OSError()"
        )
    )
    assert not _not_sent(aiohttp.ServerDisconnectedError())
    assert not _not_sent(aiohttp.ClientOSError(104, "Connection reset by peer"))


async def test_a_request_written_in_full_is_not_sent_twice(client: Upstream) -> None:
    async def read_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"content-length" in head.lower()
        await reader.read(1 << 20)
        writer.close()  # the request was received: no answer, the connection closed

    url, server, connections = await serve(read_then_close)
    async with server:
        with pytest.raises(EngineError):
            await client.post(url, b'{"model":"m"}')
    assert len(connections) == 1
