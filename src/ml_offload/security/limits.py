"""Requests and tokens per minute, on the `limits` package's storages.

`memory://` counts in this gateway; `redis://` (or `rediss://`) in a Redis that every gateway
pointing at it shares. Windows are fixed minutes aligned on the clock, named by their index,
so a reservation made in one window is refunded into that same window, or not at all (once the
window is over its counter no longer matters). Each charge is one atomic increment: the new
count decides, and a refused charge is taken back at once, so concurrent requests can never be
admitted past the limit together.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable
from functools import lru_cache

from limits import RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string

from ml_offload.domain import Charge, Window
from ml_offload.errors import ConfigError, Unavailable, safe_url

log = logging.getLogger(__name__)

WINDOW_S = 60


class Limiter:
    def __init__(self, storage_url: str) -> None:
        self._url = storage_url
        self._shown = safe_url(storage_url)  # for messages: never its password
        self._storage: Storage | None = None

    async def start(self, *, must_answer: bool = True) -> None:
        """Open the storage and check it answers: a wrong Redis address fails at start, or,
        with `must_answer` False, is logged (each charge then tries it again)."""
        try:
            storage = storage_from_string("async+" + self._url, wrap_exceptions=True)
        except (ConfigurationError, ValueError) as exc:
            raise ConfigError(
                f"security.limits.storage_url {self._shown!r}: {safe_url(exc)}; use memory:// or "
                "redis://host:port"
            ) from None
        if not isinstance(storage, Storage):
            raise ConfigError(f"security.limits.storage_url {self._shown!r} is not async")
        answers = await storage.check()
        if not answers and not must_answer:
            log.warning(
                "rate limit storage %s does not answer; limits are off until it does", self._shown
            )
        elif not answers:
            raise ConfigError(
                f"security.limits.storage_url {self._shown!r} does not answer; start it or fix "
                "the address"
            )
        self._storage = storage

    async def close(self) -> None:
        self._storage = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("Limiter.start() was not called")
        return self._storage

    async def charge(self, scope: str, limit: int, amount: int) -> tuple[Window, Charge | None]:
        """Take `amount` from `scope`'s limit for this minute: the charge when it fits, else
        None (and nothing taken)."""
        now = time.time()
        index = int(now // WINDOW_S)
        key = _key(scope, limit, index)
        used = await self._incr(key, amount)
        window = Window(limit, used, (index + 1) * WINDOW_S - now)
        if used <= limit:
            return window, Charge(key, index, amount)
        await self._incr(key, -amount)
        return Window(limit, used - amount, window.reset_s), None

    async def settle(self, charge: Charge, actual: int) -> None:
        """Make `charge` cost `actual`: refund the unused part, or add what was used beyond it
        (the request already ran). Nothing happens once its window is over."""
        delta = actual - charge.amount
        if delta and int(time.time() // WINDOW_S) == charge.window:
            await self._incr(charge.key, delta)

    async def peek(self, scope: str, limit: int) -> Window:
        now = time.time()
        index = int(now // WINDOW_S)
        used = await self._call(self.storage.get(_key(scope, limit, index)))
        return Window(limit, max(0, used), (index + 1) * WINDOW_S - now)

    async def _incr(self, key: str, amount: int) -> int:
        return await self._call(self.storage.incr(key, WINDOW_S, amount=amount))

    async def _call(self, op: Awaitable[int]) -> int:
        try:
            return int(await op)
        except StorageError as exc:
            raise Unavailable(
                f"rate limit storage {self._shown} failed: {safe_url(exc.storage_error)}; check "
                "security.limits.storage_url and that it is reachable",
                retry_after_s=1,
            ) from None


@lru_cache(maxsize=4096)  # built for every charge; the same few keys all minute long
def _key(scope: str, limit: int, index: int) -> str:
    """The limits package's key for this scope's limit in window `index`."""
    return RateLimitItemPerMinute(limit).key_for("mlo", scope, str(index))


def reset_text(seconds: float) -> str:
    """OpenAI's `x-ratelimit-reset-*` format: `1s`, `6m0s`."""
    s = max(1, math.ceil(seconds))
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"
