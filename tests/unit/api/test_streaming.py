"""`until_disconnect`: the work's answer, or ClientGone with the work cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from ml_offload.api.streaming import ClientGone, until_disconnect


def _request(disconnect: asyncio.Event) -> Request:
    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


async def test_the_answer_when_the_client_stays() -> None:
    async def work() -> str:
        await asyncio.sleep(0)
        return "answer"

    assert await until_disconnect(_request(asyncio.Event()), work()) == "answer"


async def test_a_client_that_leaves_cancels_the_work() -> None:
    gone = asyncio.Event()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def leave() -> None:
        await started.wait()
        gone.set()

    leaver = asyncio.ensure_future(leave())
    with pytest.raises(ClientGone):
        await until_disconnect(_request(gone), work())
    await leaver
    assert cancelled.is_set()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)  # this task can go on awaiting: the cancellation was taken back


async def test_a_cancelled_request_is_not_taken_for_a_client_that_left() -> None:
    async def work() -> str:
        await asyncio.sleep(60)
        return "never"

    task = asyncio.ensure_future(until_disconnect(_request(asyncio.Event()), work()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
