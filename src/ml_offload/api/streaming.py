"""Server-sent events and client-disconnect handling.

`EventStreamResponse` is a small ASGI response that stops the upstream generation the moment
the client goes away (it races the stream against `http.disconnect`), and always runs its
cleanup so the model's slot is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStreamResponse(Response):
    """A Response (so FastAPI passes it through untouched) that streams and cleans up."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        cleanup: Callable[[], Awaitable[None]],
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self._events = events
        self._cleanup = cleanup
        self._sse_headers = headers or SSE_HEADERS
        self.raw_headers = list(self._sse_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with contextlib.suppress(ClientGone, OSError):  # OSError: the socket went first
                await watched(receive, self._pump(send))
        finally:
            await self._cleanup()

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._sse_headers})
        async for chunk in self._events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`, cancelling it if the client disconnects first (frees the engine slot, or
    its place in the queue; a stream still queued or loading is never sent to the engine)."""
    return await watched(request.receive, work)


async def watched(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """Await `work` in this task while one watcher task waits for `http.disconnect`, which
    cancels this task and is raised here as `ClientGone`. (One task per request, not two and
    an `asyncio.wait`: this is on every request's path.)"""
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always called from a task
        return await work
    running, gone = True, False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        if running:  # else `work` has returned and this task is past it: nothing to stop
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()  # ours, not a cancellation from outside: it ends here
        raise ClientGone from None
    finally:
        running = False
        watcher.cancel()
