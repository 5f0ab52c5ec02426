"""Which deployment answers a request: the model itself, then its configured fallbacks.

Ready deployments go first (no load wait), then the rest in configured order; a deployment
that failed (unreachable, 5xx, timeout, no room to load) is skipped for `router.cooldown_s`,
unless every deployment is cooling down, in which case they are all tried again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ml_offload.domain import ModelSpec, ModelState
from ml_offload.errors import EngineError, MloError, OverCapacity, Unavailable

StateOf = Callable[[ModelSpec], ModelState]


def should_fall_back(exc: MloError) -> bool:
    """The deployment failed or is full (not the client's mistake): another one may answer."""
    return isinstance(exc, EngineError | Unavailable | OverCapacity)


@dataclass(slots=True)
class Health:
    failures: int = 0
    cooling_until: float = 0.0
    last_error: str | None = None


class Router:
    def __init__(
        self,
        resolve: Callable[[str], ModelSpec],
        state_of: StateOf,
        *,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        self._state_of = state_of
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._health: dict[str, Health] = {}

    def candidates(self, name: str) -> list[ModelSpec]:
        """The deployments to try for `name`, best first (raises ModelNotFound for `name`)."""
        primary = self._resolve(name)
        if not primary.fallbacks:
            return [primary]  # the hot path: one deployment, nothing to order
        specs = [primary, *self._fallbacks(primary)]
        now = self._clock()
        usable = [s for s in specs if self.health(s.name).cooling_until <= now] or specs
        return sorted(usable, key=lambda s: self._state_of(s) is not ModelState.READY)

    def _fallbacks(self, primary: ModelSpec) -> list[ModelSpec]:
        out = []
        for name in primary.fallbacks:
            try:
                spec = self._resolve(name)
            except MloError:
                continue  # an unknown fallback is skipped (the registry logs it at start-up)
            if spec.name != primary.name:
                out.append(spec)
        return out

    def health(self, name: str) -> Health:
        return self._health.setdefault(name, Health())

    def failed(self, spec: ModelSpec, exc: MloError) -> None:
        h = self.health(spec.name)
        h.failures += 1
        h.cooling_until = self._clock() + self._cooldown_s
        h.last_error = exc.message

    def succeeded(self, spec: ModelSpec) -> None:
        h = self._health.get(spec.name)
        if h is not None and h.cooling_until:
            h.cooling_until, h.last_error = 0.0, None

    def cooling_s(self, name: str) -> float:
        return max(0.0, self.health(name).cooling_until - self._clock())
