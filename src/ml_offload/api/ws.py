"""WebSocket streaming at `/ws/inference`: several requests at once on one connection.

Each request runs as its own task holding its own model slot; a cancel, or the connection
closing, cancels the task, which closes the engine stream and frees the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from ml_offload.api.security import context_of
from ml_offload.domain import RequestContext
from ml_offload.errors import InvalidRequest, MloError
from ml_offload.inference import InferenceService
from ml_offload.security.guard import Guard
from ml_offload.wire import ws as wire
from ml_offload.wire.body import load_object

log = logging.getLogger(__name__)
router = APIRouter()


class _Connection:
    def __init__(
        self,
        socket: WebSocket,
        inference: InferenceService,
        guard: Guard,
        ctx: RequestContext | None,
    ) -> None:
        self._socket = socket
        self._inference = inference
        self._guard = guard
        self._ctx = ctx  # the handshake's: who is connected
        self._send_lock = asyncio.Lock()
        self._tasks: dict[wire.RequestId, asyncio.Task[None]] = {}

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._socket.send_text(orjson.dumps(message).decode())

    async def serve(self) -> None:
        try:
            async for frame in _frames(self._socket):
                await self._handle(frame)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _handle(self, text: str | bytes) -> None:
        request_id = None
        try:
            data = load_object(text, "message")
            request_id = data.get("id")
            message = wire.parse(data)
        except MloError as exc:
            await self.send(wire.error(request_id, exc))
            return
        if isinstance(message, wire.Cancel):
            await self._cancel(message.id)
        elif message.id in self._tasks:
            await self.send(wire.error(message.id, InvalidRequest("id is already running")))
        else:
            task = asyncio.create_task(self._run(message))
            self._tasks[message.id] = task
            task.add_done_callback(lambda t: self._forget(message.id, t))

    def _forget(self, request_id: wire.RequestId, task: asyncio.Task[None]) -> None:
        if self._tasks.get(request_id) is task:
            del self._tasks[request_id]

    async def _cancel(self, request_id: wire.RequestId) -> None:
        task = self._tasks.get(request_id)
        if task is None:
            await self.send(
                wire.error(request_id, InvalidRequest("no running request has this id"))
            )
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.send({"id": request_id, "cancelled": True})

    async def _run(self, start: wire.Start) -> None:
        """One request: its own context (limits, audit event), settled when it ends."""
        ctx = None if self._ctx is None else self._guard.derive(self._ctx)
        try:
            await self._stream(start, ctx)
        finally:
            if ctx is not None:
                await self._guard.finish(ctx)

    async def _stream(self, start: wire.Start, ctx: RequestContext | None) -> None:
        kind, data = wire.to_openai(start)
        try:
            stream = await self._inference.open_stream(kind, data, ctx)
        except MloError as exc:
            _note(ctx, exc.status)
            await self.send(wire.error(start.id, exc))
            return
        finish, usage = None, None
        try:
            async for chunk in stream:
                usage = chunk.get("usage") or usage
                text, finished = wire.text_of(chunk)
                finish = finished or finish
                if text:
                    await self.send({"id": start.id, "delta": text})
        except MloError as exc:
            _note(ctx, exc.status)
            await self.send(wire.error(start.id, exc))
            return
        except asyncio.CancelledError:
            _note(ctx, 499)
            raise
        finally:
            await stream.aclose()
        _note(ctx, 200)
        await self.send({"id": start.id, "done": True, "finish_reason": finish, "usage": usage})


@router.websocket("/ws/inference")
async def inference(socket: WebSocket) -> None:
    await socket.accept()
    svc = socket.app.state.services
    connection = _Connection(socket, svc.inference, svc.guard, context_of(socket.scope))
    with contextlib.suppress(WebSocketDisconnect):
        await connection.serve()


async def _frames(socket: WebSocket) -> AsyncIterator[str | bytes]:
    """Each message as it came: text frames, and binary ones (JSON in UTF-8 either way; a
    binary frame used to end the connection with an error instead of an answer)."""
    while True:
        message = await socket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        yield text if text is not None else message.get("bytes") or b""


def _note(ctx: RequestContext | None, status: int) -> None:
    if ctx is not None and not ctx.status:
        ctx.status = status
