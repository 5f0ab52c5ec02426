"""The per-model slot gate: concurrency, bounded queue, deadlines, cancellation."""

import asyncio

import pytest

from ml_offload.errors import OverCapacity, Unavailable
from ml_offload.slots import SlotGate


async def test_runs_up_to_slots_then_queues_then_refuses() -> None:
    gate = SlotGate("m", slots=2, queue_size=1)
    await gate.acquire(1)
    await gate.acquire(1)
    waiter = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    assert gate.queued == 1 and gate.in_flight == 2
    with pytest.raises(OverCapacity) as exc:
        await gate.acquire(1)
    assert exc.value.status == 429 and exc.value.retry_after_s and exc.value.retry_after_s >= 1
    gate.release()  # hands the slot to the waiter
    await waiter
    assert gate.in_flight == 2 and gate.queued == 0


async def test_queue_deadline_gives_503() -> None:
    gate = SlotGate("m", slots=1, queue_size=4)
    await gate.acquire(1)
    with pytest.raises(Unavailable):
        await gate.acquire(0.01)
    assert gate.queued == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    gate = SlotGate("m", slots=1, queue_size=4)
    await gate.acquire(1)
    waiter = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    assert gate.in_flight == 0 and not gate.busy


async def test_cancel_in_the_turn_the_slot_is_handed_over_still_cancels() -> None:
    """The departed client's waiter gives up even when the slot reached it in the same loop
    turn (`wait_for` on 3.11 lost this cancellation); the slot passes on to the next waiter."""
    gate = SlotGate("m", slots=1, queue_size=4)
    await gate.acquire(1)
    departed = asyncio.create_task(gate.acquire(5))
    stays = asyncio.create_task(gate.acquire(5))
    await asyncio.sleep(0)
    gate.release()  # hands the slot to `departed`...
    departed.cancel()  # ...whose client leaves in the same turn
    with pytest.raises(asyncio.CancelledError):
        await departed
    await stays  # the slot went on to the next waiter
    assert gate.in_flight == 1 and gate.queued == 0
    gate.release()
    assert not gate.busy
