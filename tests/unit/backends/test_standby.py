"""The standby's bookkeeping on real files: mapped, locked, released, within its budget."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from ml_offload.backends.standby import (
    Standby,
    available_bytes,
    drop_from_page_cache,
    resident_bytes,
)

KB = 1024


def weights(tmp_path: Path, name: str, size: int = 64 * KB) -> Path:
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(os.urandom(size))
    os.sync()  # written back, so the kernel may drop the pages when asked
    return path


async def test_parked_weights_stay_resident_when_the_cache_is_dropped(tmp_path: Path) -> None:
    standby = Standby(enabled=True, max_bytes=1 << 20, hold_s=60)
    path = weights(tmp_path, "a")
    await standby.park("a", path)
    assert standby.bytes_of("a") == path.stat().st_size
    drop_from_page_cache(path)
    if standby.locked("a"):
        assert resident_bytes(path) == path.stat().st_size
    else:  # mlock not permitted here: read ahead only, which the kernel may take back
        assert standby.locked("a") is False
    standby.release("a")
    assert standby.bytes_of("a") is None
    drop_from_page_cache(path)
    assert resident_bytes(path) < path.stat().st_size  # nothing holds it any more


async def test_the_oldest_goes_when_the_budget_is_full(tmp_path: Path) -> None:
    standby = Standby(enabled=True, max_bytes=150 * KB, hold_s=60)
    a, b, c = (weights(tmp_path, n) for n in "abc")
    await standby.park("a", a)
    await standby.park("b", b)
    await standby.park("c", c)  # 3 x 64 KB > 150 KB: a, parked first, is released
    assert [standby.bytes_of(n) for n in "abc"] == [None, 64 * KB, 64 * KB]
    await standby.park("big", weights(tmp_path, "big", 200 * KB))  # never fits: nothing moves
    assert standby.bytes_of("big") is None and standby.bytes_of("b") == 64 * KB
    standby.close()
    assert [standby.bytes_of(n) for n in "bc"] == [None, None]


async def test_a_starting_load_takes_room_but_keeps_its_own(tmp_path: Path) -> None:
    standby = Standby(enabled=True, max_bytes=1 << 20, hold_s=60)
    await standby.park("a", weights(tmp_path, "a"))
    await standby.park("b", weights(tmp_path, "b"))
    standby.before_load("b", weights(tmp_path, "small", 1 * KB))  # room enough: none released
    assert standby.bytes_of("a") == standby.bytes_of("b") == 64 * KB
    huge = tmp_path / "huge.gguf"
    with huge.open("wb") as f:
        f.truncate(available_bytes())  # sparse: as big as memory, on no disk
    standby.before_load("b", huge)  # more than there is: all but b's own
    assert standby.bytes_of("a") is None and standby.bytes_of("b") == 64 * KB
    standby.close()


async def test_held_no_longer_than_standby_s(tmp_path: Path) -> None:
    standby = Standby(enabled=True, max_bytes=1 << 20, hold_s=0.2)
    await standby.park("a", weights(tmp_path, "a"))
    assert standby.bytes_of("a") == 64 * KB
    await asyncio.sleep(0.4)  # nothing else happens: released all the same
    assert standby.bytes_of("a") is None


@pytest.mark.parametrize("enabled", [False, True])
async def test_off_or_shutting_down_holds_nothing(tmp_path: Path, enabled: bool) -> None:
    standby = Standby(enabled=enabled, max_bytes=1 << 20, hold_s=60)
    standby.stop_parking()
    await standby.park("a", weights(tmp_path, "a"))
    assert standby.bytes_of("a") is None
    await standby.park("gone", tmp_path / "missing.gguf")  # a file gone: no error
    assert standby.bytes_of("gone") is None


async def test_a_load_that_overtakes_the_park_keeps_nothing_held(tmp_path: Path) -> None:
    """The engine stopped, its weights being read in, and the model is asked for again: the
    late park must not hold pages the new engine has (nor count them against the budget)."""
    standby = Standby(enabled=True, max_bytes=1 << 20, hold_s=60)
    path = weights(tmp_path, "a")
    parking = asyncio.ensure_future(standby.park("a", path))
    await asyncio.sleep(0)  # the park is in its thread
    standby.before_load("a", path)
    standby.release("a")  # the engine is ready
    await parking
    assert standby.bytes_of("a") is None
