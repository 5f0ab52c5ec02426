"""Pure scheduling decisions: what to evict to make room, and what is idle.

No I/O and no clocks: the scheduler passes in views of loaded models and the time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoadedView:
    name: str
    estimate_bytes: int
    busy: bool  # requests in flight or queued
    pinned: bool
    last_used: float  # monotonic seconds
    ttl_s: float


@dataclass(frozen=True, slots=True)
class Eviction:
    """The outcome of `plan_room`: evict these (possibly none), or `refused` with a reason."""

    evict: tuple[str, ...] = ()
    refused: str | None = None
    wait: bool = False  # room could appear when busy models go idle


def plan_room(
    loaded: list[LoadedView], *, need_bytes: int, budget_bytes: int, max_loaded: int
) -> Eviction:
    """Choose the least recently used idle, unpinned models to evict so one more model fits.

    Fits means: at most `max_loaded` models loaded and the sum of estimates within the budget.
    """
    if need_bytes > budget_bytes:
        return Eviction(
            refused=f"needs {_gib(need_bytes)} but the memory budget is {_gib(budget_bytes)}"
        )
    used = sum(m.estimate_bytes for m in loaded)
    count = len(loaded)
    evict: list[str] = []
    for m in sorted((m for m in loaded if not m.busy and not m.pinned), key=lambda m: m.last_used):
        if count < max_loaded and used + need_bytes <= budget_bytes:
            break
        evict.append(m.name)
        count -= 1
        used -= m.estimate_bytes
    if count < max_loaded and used + need_bytes <= budget_bytes:
        return Eviction(evict=tuple(evict))
    if any(m.busy and not m.pinned for m in loaded):
        return Eviction(wait=True, refused="all loaded models are busy")
    return Eviction(refused="the loaded models are pinned and leave no room")


def idle_expired(loaded: list[LoadedView], now: float) -> list[str]:
    """Models whose idle time passed their TTL (TTL 0 means never), oldest first."""
    expired = [
        m
        for m in loaded
        if m.ttl_s > 0 and not m.busy and not m.pinned and now - m.last_used >= m.ttl_s
    ]
    return [m.name for m in sorted(expired, key=lambda m: m.last_used)]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
