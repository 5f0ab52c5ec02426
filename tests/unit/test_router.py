"""Which deployment answers: ready first, configured order, cooldown after a failure."""

from __future__ import annotations

import pytest
from aiohttp import web
from pydantic import SecretStr

from ml_offload.backends.http import Upstream
from ml_offload.backends.probe import BackendMonitor
from ml_offload.domain import DeploymentKind, ModelSpec, ModelState
from ml_offload.errors import (
    EngineError,
    EngineTimeout,
    InvalidRequest,
    ModelNotFound,
    OverCapacity,
    Unavailable,
    UpstreamClientError,
)
from ml_offload.router import Load, Router, should_fall_back
from ml_offload.wire.vllm import VllmLoad

REMOTE = DeploymentKind.REMOTE


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


SPECS = {
    "main": ModelSpec("main", kind=REMOTE, url="http://a", fallbacks=("backup", "cloud", "ghost")),
    "backup": ModelSpec("backup", kind=REMOTE, url="http://b"),
    "cloud": ModelSpec("cloud", kind=REMOTE, url="http://c"),
    "solo": ModelSpec("solo", kind=REMOTE, url="http://d"),
}


def resolve(name: str) -> ModelSpec:
    if name not in SPECS:
        raise ModelNotFound(f"model {name!r} not found")
    return SPECS[name]


def make(
    ready: set[str] | None = None, loads: dict[str, Load] | None = None
) -> tuple[Router, Clock]:
    clock = Clock()

    def state(spec: ModelSpec) -> ModelState:
        return ModelState.READY if spec.name in (ready or set()) else ModelState.STOPPED

    def load_of(spec: ModelSpec) -> Load:
        return (loads or {}).get(spec.name, Load())

    return Router(resolve, state, cooldown_s=30, clock=clock, load_of=load_of), clock


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


def test_least_work_then_most_free_memory_then_configured_order() -> None:
    loads = {"main": Load(5), "backup": Load(1), "cloud": Load(1)}
    router, _ = make(loads=loads)
    assert names(router.candidates("main")) == ["backup", "cloud", "main"]
    loads["cloud"] = Load(1, free_fraction=0.6)
    loads["backup"] = Load(1, free_fraction=0.2)
    assert names(router.candidates("main")) == ["cloud", "backup", "main"]
    loads.update(main=Load(0), backup=Load(0), cloud=Load(0))  # all equal: configured order
    assert names(router.candidates("main")) == ["main", "backup", "cloud"]


def test_ready_beats_idle_but_loading() -> None:
    router, _ = make(ready={"main"}, loads={"main": Load(9), "backup": Load(0)})
    assert names(router.candidates("main")) == ["main", "backup", "cloud"]


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


def test_a_session_goes_back_where_it_was_answered_while_healthy() -> None:
    loads = {"main": Load(5), "backup": Load(1), "cloud": Load(1)}
    router, clock = make(loads=loads)
    assert names(router.candidates("main"))[0] == "backup"  # least busy
    router.succeeded(SPECS["cloud"], "user:ann")  # ann was answered by cloud
    first = router.sticky_first(router.candidates("main"), "user:ann")
    assert names(first) == ["cloud", "backup", "main"]
    assert names(router.sticky_first(router.candidates("main"), "user:bob")) == [
        "backup",
        "cloud",
        "main",
    ]  # an unknown session: the usual order
    router.failed(SPECS["cloud"], EngineError("down"))  # cooling down: not sticky any more
    assert names(router.sticky_first(router.candidates("main"), "user:ann"))[0] == "backup"
    clock.now += 31
    assert names(router.sticky_first(router.candidates("main"), "user:ann"))[0] == "cloud"


def test_a_session_does_not_wait_for_a_load_when_another_is_ready() -> None:
    router, _ = make(ready={"backup"})
    router.succeeded(SPECS["main"], "user:ann")  # main answered, then was unloaded
    assert names(router.sticky_first(router.candidates("main"), "user:ann"))[0] == "backup"


def test_sessions_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ml_offload.router.STICKY_SESSIONS", 2)
    router, _ = make(loads={"main": Load(5)})
    for who in ("a", "b", "c"):
        router.succeeded(SPECS["cloud"], who)
    assert names(router.sticky_first(router.candidates("main"), "a"))[0] == "backup"  # forgotten
    assert names(router.sticky_first(router.candidates("main"), "c"))[0] == "cloud"


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
        (UpstreamClientError("provider quota", status=429), True),
    ],
)
def test_only_deployment_failures_fall_back(exc: Exception, falls_back: bool) -> None:
    assert should_fall_back(exc) is falls_back  # type: ignore[arg-type]


class Metrics:
    """A vLLM /metrics page on loopback whose figures a test changes."""

    def __init__(self) -> None:
        self.running = 2

    async def handle(self, request: web.Request) -> web.Response:
        text = f'vllm:num_requests_running{{model_name="m"}} {self.running}\n'
        text += 'vllm:num_requests_waiting{model_name="m"} 1\n'
        return web.Response(text=text)


async def test_scraped_load_is_fresh_or_unknown() -> None:
    metrics = Metrics()
    app = web.Application()
    app.router.add_get("/metrics", metrics.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    upstream = Upstream(timeout_s=5)
    await upstream.start()
    clock = Clock()
    spec = ModelSpec("m", kind=REMOTE, url=url, backend="vllm")
    down = ModelSpec("down", kind=REMOTE, url="http://127.0.0.1:9", backend="vllm")
    monitor = BackendMonitor(
        upstream, lambda: [(spec, url), (down, down.url or "")], interval_s=1, clock=clock
    )
    try:
        await monitor.probe_all()
        load = monitor.load("m")
        assert load is not None and (load.running, load.work) == (2, 3)
        failed = monitor.get("down")
        assert monitor.load("down") is None and failed is not None and not failed.ok
        assert failed.error and "cannot reach" in failed.error
        clock.now += 10  # no probe since: stale, so unknown
        assert monitor.load("m") is None
        metrics.running = 0
        await monitor.probe_all()
        assert monitor.load("m") == VllmLoad(0, 1, None)
    finally:
        await upstream.close()
        await runner.cleanup()


def test_a_specs_key_is_not_in_its_repr() -> None:
    spec = ModelSpec(
        "claude",
        kind=DeploymentKind.CLOUD,
        url="https://api.anthropic.com",
        api_key=SecretStr("sk-ant-xyz"),
    )
    assert "sk-ant-xyz" not in repr(spec) and "sk-ant-xyz" not in str(spec)
    assert spec.api_key is not None and spec.api_key.get_secret_value() == "sk-ant-xyz"
