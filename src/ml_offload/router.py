"""Which deployment answers a request: the model itself, then its configured fallbacks.

Ready deployments go first (no load wait), then the least busy (requests running and waiting:
vLLM's own figures from its /metrics when fresh, else our in-flight and queued counts), then the
one with most free memory (vLLM's KV cache), then configured order. A deployment that failed
(unreachable, 5xx, timeout, no room to load) is skipped for `router.cooldown_s`, unless every
deployment is cooling down, in which case they are all tried again. A conversation
(`wire.openai.session_of`) goes back to the deployment that last answered it while that one is
healthy, so its prompt cache keeps hitting and a tool loop does not change models mid-task.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ml_offload.backends.probe import BackendMonitor
from ml_offload.domain import ModelSpec, ModelState
from ml_offload.errors import (
    EngineError,
    EngineUnreachable,
    MloError,
    OverCapacity,
    Unavailable,
    UpstreamClientError,
)
from ml_offload.fleet.routing import FleetRoutes
from ml_offload.scheduler import Scheduler
from ml_offload.wire.openai import PREFIX, continues, session_of

StateOf = Callable[[ModelSpec], ModelState]
STICKY_SESSIONS = 10_000  # conversations remembered (least recently seen forgotten first)


@dataclass(frozen=True, slots=True)
class Load:
    """The work on a deployment, and its free memory fraction (0..1) when known."""

    work: int = 0
    free_fraction: float | None = None


LoadOf = Callable[[ModelSpec], Load]


def _no_load(spec: ModelSpec) -> Load:
    return Load()


def deployment_load(scheduler: Scheduler, probes: BackendMonitor | None) -> LoadOf:
    """vLLM's scraped load when fresh; otherwise our own in-flight and queued requests."""

    def load_of(spec: ModelSpec) -> Load:
        scraped = probes.load(spec.name) if probes is not None else None
        if scraped is not None:
            kv = scraped.kv_cache_usage
            return Load(scraped.work, None if kv is None else max(0.0, 1.0 - kv))
        status = scheduler.status([spec])[0]
        return Load(status.in_flight + status.queued)

    return load_of


def should_fall_back(exc: MloError) -> bool:
    """The deployment failed or is full (not the client's mistake): another one may answer.
    An upstream 429 (a cloud provider's rate limit or quota) counts as full."""
    if isinstance(exc, UpstreamClientError):
        return exc.status == 429
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
        load_of: LoadOf = _no_load,
        fleet: FleetRoutes | None = None,
    ) -> None:
        """`fleet`: a gateway's routes to its nodes, tried before its own registry."""
        self._fleet = fleet
        self._resolve = resolve
        self._state_of = state_of
        self._load_of = load_of
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._health: dict[str, Health] = {}
        self._sticky: OrderedDict[str, str] = OrderedDict()  # session -> deployment name

    def candidates(self, name: str) -> list[ModelSpec]:
        """The deployments to try for `name`, best first (raises ModelNotFound for `name`);
        on a gateway, the fleet's nodes that serve it."""
        return self.route({"model": name})[0]

    def route(
        self, data: dict[str, Any], header: str | None = None
    ) -> tuple[list[ModelSpec], str | None]:
        """`candidates` for the request `data`, and its conversation (`session_of`; `header`:
        the caller's `x-session-id`) for `succeeded`, None where there is no choice to
        remember. On a gateway the fleet orders its nodes (a session the caller names picks among
        equals on every gateway alike, fleet/routing.py; one known by its text is not steered
        before it continues). Otherwise a later turn, or a request the client names, goes first to
        the deployment that answered it before; a first turn known only by its text is not
        steered (two people asking the same thing are not one conversation)."""
        name = data["model"]
        if self._fleet is not None:
            session = session_of(data, header)
            named = session is not None and not session.startswith(PREFIX)
            nodes = self._fleet.candidates(name, session if named else None)
            if nodes is not None:  # in the fleet's order; a conversation back to its node
                usable = self._usable(nodes)
                if session is not None and (named or continues(data)):
                    usable = self.sticky_first(usable, session)
                return usable, session
        primary = self._resolve(name)
        if not primary.fallbacks:
            return [primary], None  # the hot path: one deployment, nothing to order
        ranked, session = self._ranked(primary), session_of(data, header)
        if session is None or (session.startswith(PREFIX) and not continues(data)):
            return ranked, session  # a first turn: remembered, not steered
        return self.sticky_first(ranked, session), session

    def _ranked(self, primary: ModelSpec) -> list[ModelSpec]:
        specs = [primary, *self._fallbacks(primary)]
        return sorted(self._usable(specs), key=self._rank)  # stable: configured order first

    def _usable(self, specs: list[ModelSpec]) -> list[ModelSpec]:
        """Those not cooling down after a failure; all of them when every one is."""
        now = self._clock()
        return [s for s in specs if self.health(s.name).cooling_until <= now] or specs

    def _rank(self, spec: ModelSpec) -> tuple[bool, int, float]:
        load = self._load_of(spec)
        free = 0.0 if load.free_fraction is None else load.free_fraction
        return (self._state_of(spec) is not ModelState.READY, load.work, -free)

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
        """A deployment's health; one that never failed has a fresh record (none is stored)."""
        return self._health.get(name) or Health()

    def failed(self, spec: ModelSpec, exc: MloError) -> None:
        h = self._health.setdefault(spec.name, Health())
        h.failures += 1
        h.cooling_until = self._clock() + self._cooldown_s
        h.last_error = exc.message
        if self._fleet is not None and isinstance(exc, EngineUnreachable):
            self._fleet.unreachable(spec)  # the whole node, not only this model on it

    def sticky_first(self, candidates: list[ModelSpec], session: str) -> list[ModelSpec]:
        """`candidates` with the deployment that last answered `session` first, if it is among
        them (healthy) and ready whenever the first is: a conversation stays where its prompt
        cache is."""
        name = self._sticky.get(session)
        if name is None or candidates[0].name == name:
            return candidates
        sticky = next((spec for spec in candidates if spec.name == name), None)
        if sticky is None or self._rank(sticky)[0] > self._rank(candidates[0])[0]:
            return candidates  # gone, cooling down, or unloaded while another is ready
        return [sticky, *(spec for spec in candidates if spec is not sticky)]

    def succeeded(self, spec: ModelSpec, session: str | None = None) -> None:
        h = self._health.get(spec.name)
        if h is not None and h.cooling_until:
            h.cooling_until, h.last_error = 0.0, None
        if session is not None:
            self._sticky[session] = spec.name
            self._sticky.move_to_end(session)
            if len(self._sticky) > STICKY_SESSIONS:
                self._sticky.popitem(last=False)  # the least recently seen

    def cooling_s(self, name: str) -> float:
        return max(0.0, self.health(name).cooling_until - self._clock())
