"""Standby: a stopped model's weights kept in host memory for its next load (issue 20).

When a llama.cpp engine stops (idle unload, eviction, a swap), its GGUF file is mapped and
locked in memory (`mlock`), while host memory allows. The next load of that model then reads
RAM, even after other work has pushed the file out of the page cache. Where locking is not
permitted (`RLIMIT_MEMLOCK`; systemd's `LimitMEMLOCK=infinity` allows it), the file is read
ahead and kept mapped instead ("cached"): the kernel may still reclaim those pages.

Held at most `engine.standby_max_bytes` in all (default: a quarter of host memory), only while
`MemAvailable` stays above `RESERVE_BYTES` plus what a starting load needs, for at most
`engine.standby_s`; released least recently parked first, and when the model loads again
(once its engine is ready: the engine maps the same pages).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_BYTES = 1 << 30  # host memory left available, whatever the standby holds
_TIMER_SLACK_S = 0.05
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_LIBC.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


@dataclass(slots=True)
class Parked:
    path: Path
    size: int
    address: int
    locked: bool  # False: read ahead and mapped only ("cached")
    since: float


def available_bytes() -> int:
    """`MemAvailable` from /proc/meminfo (what can be had without swapping)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class Standby:
    """The parked weights, by model name."""

    def __init__(self, *, enabled: bool, max_bytes: int, hold_s: float) -> None:
        self.enabled = enabled
        self.max_bytes = max_bytes
        self.hold_s = hold_s
        self._parked: dict[str, Parked] = {}
        self._loads: dict[str, int] = {}  # loads started per model: a park that a load overtook

    def bytes_of(self, name: str) -> int | None:
        parked = self._parked.get(name)
        return None if parked is None else parked.size

    def locked(self, name: str) -> bool | None:
        parked = self._parked.get(name)
        return None if parked is None else parked.locked

    async def park(self, name: str, path: Path) -> None:
        """Hold `path` for `name`'s next load, if it fits (never fails a stop)."""
        size = _size(path)
        if not self.enabled or name in self._parked or not size:
            return
        self._expire()
        if not self._make_room(size, need=size):
            log.info("standby: no room for %s (%d bytes)", name, size)
            return
        loads = self._loads.get(name, 0)
        try:
            parked = await asyncio.to_thread(_hold, path, size)  # reads the file: seconds
        except OSError as exc:
            log.warning("standby: cannot hold %s: %s", path, exc)
            return
        if self._loads.get(name, 0) != loads or not self.enabled:  # loaded again meanwhile
            _LIBC.munmap(parked.address, parked.size)
            return
        self._parked[name] = parked
        # released when its time is up, idle or not (a little after: the loop may run early)
        asyncio.get_running_loop().call_later(self.hold_s + _TIMER_SLACK_S, self._expire)
        how = "locked" if parked.locked else "cached (mlock not permitted)"
        log.info("standby: %s's weights held in memory, %s, %d bytes", name, how, size)

    def before_load(self, name: str, path: Path) -> None:
        """`name` is loading from `path`: make room for it (its own weights stay held until
        its engine is ready)."""
        self._loads[name] = self._loads.get(name, 0) + 1
        self._expire()
        self._make_room(0, need=_size(path), keep=name)

    def release(self, name: str) -> None:
        parked = self._parked.pop(name, None)
        if parked is not None:
            _LIBC.munmap(parked.address, parked.size)

    def stop_parking(self) -> None:
        """Shutting down: engines stopped from now on are not held."""
        self.enabled = False

    def close(self) -> None:
        for name in list(self._parked):
            self.release(name)

    def _expire(self) -> None:
        now = time.monotonic()
        for name, parked in list(self._parked.items()):
            if now - parked.since >= self.hold_s:
                self.release(name)

    def _make_room(self, adding: int, *, need: int, keep: str | None = None) -> bool:
        """Release the oldest parked files until `adding` more fits the budget and `need`
        bytes of host memory stay available above the reserve; False if it cannot."""
        if adding > self.max_bytes:
            return False
        oldest_first = [n for n in self._parked if n != keep]  # insertion order: parked order
        while True:
            held = sum(p.size for p in self._parked.values())
            fits = held + adding <= self.max_bytes
            if fits and available_bytes() - need >= RESERVE_BYTES:
                return True
            if not oldest_first:
                return False
            self.release(oldest_first.pop(0))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _map(path: Path, size: int) -> int:
    """`path` mapped read-only and shared (the page cache's own pages); its address."""
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)  # the mapping keeps the file
    if address in (None, _MAP_FAILED):
        raise OSError(ctypes.get_errno(), "mmap failed")
    return int(address)


def _hold(path: Path, size: int) -> Parked:
    """Map `path` read-only and lock it in memory (which reads it in), or else read it ahead."""
    address = _map(path, size)
    locked = _LIBC.mlock(address, size) == 0
    if not locked:
        _LIBC.madvise(address, size, mmap.MADV_WILLNEED)
    return Parked(path, size, address, locked, time.monotonic())


def resident_bytes(path: Path) -> int:
    """How much of `path` is in the page cache now (`mincore`; what `fincore` prints)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    address = _map(path, size)
    try:
        page = mmap.PAGESIZE
        pages = (size + page - 1) // page
        vec = ctypes.create_string_buffer(pages)
        if _LIBC.mincore(address, size, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return min(size, sum(b & 1 for b in vec.raw) * page)
    finally:
        _LIBC.munmap(address, size)


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to drop `path`'s cached pages (`POSIX_FADV_DONTNEED`: what memory
    pressure does; no root needed). Locked or mapped pages stay."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
