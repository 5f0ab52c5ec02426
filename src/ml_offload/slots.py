"""Per-model concurrency: `slots` requests run (None: any number), up to `queue_size` wait, the
rest are refused."""

from __future__ import annotations

import asyncio
import math
from collections import deque

from ml_offload.errors import OverCapacity, Unavailable


class SlotGate:
    def __init__(self, name: str, slots: int | None, queue_size: int) -> None:
        self.name = name
        self.slots = slots
        self.queue_size = queue_size
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or bool(self._waiters)

    async def acquire(self, timeout_s: float) -> None:
        if self.slots is None or (self.in_flight < self.slots and not self._waiters):
            self.in_flight += 1
            return
        if len(self._waiters) >= self.queue_size:
            raise OverCapacity(
                f"model {self.name!r} is at capacity ({self.slots} running, "
                f"{len(self._waiters)} queued); retry later",
                retry_after_s=self.retry_after_s(),
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            # Not `wait_for`: on 3.11 it returns the result when the slot is handed over in the
            # same loop turn as the caller's cancellation, and a departed client gets the slot.
            async with asyncio.timeout(timeout_s):
                await fut
        except TimeoutError:
            self._drop(fut)
            raise Unavailable(
                f"model {self.name!r} had no free slot within {timeout_s:.0f}s; retry later",
                retry_after_s=self.retry_after_s(),
            ) from None
        except asyncio.CancelledError:
            self._drop(fut)
            raise

    def _drop(self, fut: asyncio.Future[None]) -> None:
        """Forget a waiter that gave up; if a slot was already handed to it, pass it on."""
        if fut.done() and not fut.cancelled():
            self.release()
        else:
            fut.cancel()
            if fut in self._waiters:
                self._waiters.remove(fut)

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the next waiter
                return
        self.in_flight -= 1

    def retry_after_s(self) -> int:
        return max(1, math.ceil(len(self._waiters) / max(self.slots or 1, 1)))
