"""Which deployment answers: ready first, configured order, cooldown after a failure."""

from __future__ import annotations

import pytest

from ml_offload.domain import ModelSpec, ModelState
from ml_offload.errors import (
    EngineError,
    EngineTimeout,
    InvalidRequest,
    ModelNotFound,
    OverCapacity,
    Unavailable,
    UpstreamClientError,
)
from ml_offload.router import Router, should_fall_back


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


SPECS = {
    "main": ModelSpec("main", url="http://a", fallbacks=("backup", "cloud", "ghost")),
    "backup": ModelSpec("backup", url="http://b"),
    "cloud": ModelSpec("cloud", url="http://c"),
    "solo": ModelSpec("solo", url="http://d"),
}


def resolve(name: str) -> ModelSpec:
    if name not in SPECS:
        raise ModelNotFound(f"model {name!r} not found")
    return SPECS[name]


def make(ready: set[str] | None = None) -> tuple[Router, Clock]:
    clock = Clock()

    def state(spec: ModelSpec) -> ModelState:
        return ModelState.READY if spec.name in (ready or set()) else ModelState.STOPPED

    return Router(resolve, state, cooldown_s=30, clock=clock), clock


def names(specs: list[ModelSpec]) -> list[str]:
    return [s.name for s in specs]


def test_configured_order_and_unknown_fallbacks_skipped() -> None:
    router, _ = make()
    assert names(router.candidates("main")) == ["main", "backup", "cloud"]
    assert names(router.candidates("solo")) == ["solo"]
    with pytest.raises(ModelNotFound):
        router.candidates("nope")


def test_ready_deployments_first() -> None:
    router, _ = make(ready={"cloud"})
    assert names(router.candidates("main")) == ["cloud", "main", "backup"]


def test_failed_deployment_cools_down_then_returns() -> None:
    router, clock = make()
    router.failed(SPECS["main"], EngineError("connection refused"))
    assert names(router.candidates("main")) == ["backup", "cloud"]
    assert (
        router.cooling_s("main") == 30 and router.health("main").last_error == "connection refused"
    )
    clock.now += 31
    assert names(router.candidates("main")) == ["main", "backup", "cloud"]
    router.succeeded(SPECS["main"])
    assert router.health("main").last_error is None


def test_when_everything_cools_down_everything_is_tried() -> None:
    router, _ = make()
    for name in ("main", "backup", "cloud"):
        router.failed(SPECS[name], EngineError("down"))
    assert names(router.candidates("main")) == ["main", "backup", "cloud"]


@pytest.mark.parametrize(
    ("exc", "falls_back"),
    [
        (EngineError("refused"), True),
        (EngineTimeout("slow"), True),
        (Unavailable("no room"), True),
        (OverCapacity("full"), True),
        (InvalidRequest("bad body"), False),
        (UpstreamClientError("bad param", status=400), False),
    ],
)
def test_only_deployment_failures_fall_back(exc: Exception, falls_back: bool) -> None:
    assert should_fall_back(exc) is falls_back  # type: ignore[arg-type]
