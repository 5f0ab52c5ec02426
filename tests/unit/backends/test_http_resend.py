"""The upstream client sends a request once more when a pooled keep-alive connection turns out
closed by the server: always when aiohttp could not write the request, and when the
connection was dropped before any answer only to an engine of ours; a cloud provider's or
remote server's request that went out is never sent twice."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
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


ANSWER = b'{"ok":true}'


async def keep_alive(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, writers: list[asyncio.StreamWriter]
) -> None:
    """Answer every request on the connection, keeping it open."""
    writers.append(writer)
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
        await writer.drain()


async def reset_idle_connection(writer: asyncio.StreamWriter) -> None:
    """The server drops the pooled connection (a reset), and the client has not seen it yet
    when it sends the next request on it: the race of a keep-alive timeout under load."""
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.transport.abort()
    await asyncio.sleep(0)  # the server's socket is closed in this turn of the loop ...
    time.sleep(0.05)  # ... and the reset reaches the client's before the loop looks again


@pytest.mark.parametrize("ours", [True, False], ids=["our-engine", "remote"])
async def test_a_pooled_connection_reset_under_the_request(client: Upstream, ours: bool) -> None:
    writers: list[asyncio.StreamWriter] = []
    url, server, connections = await serve(lambda r, w: keep_alive(r, w, writers))
    if ours:
        client.authorize(url, "engine-key")
    async with server:
        assert await client.post(url, b'{"turn":1}') == (200, ANSWER)
        await reset_idle_connection(writers[0])
        if ours:
            assert await client.post(url, b'{"turn":2}') == (200, ANSWER)
            assert len(connections) == 2  # sent again, on a new connection
        else:
            with pytest.raises(EngineError, match="closed the connection"):
                await client.post(url, b'{"turn":2}')
            assert len(connections) == 1
