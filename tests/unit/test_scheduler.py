"""The scheduler with fake engine processes: on-demand load, sharing one start, LRU eviction
at the cap, idle TTL unload, pins, crash and restart."""

import asyncio
import contextlib
from pathlib import Path

import pytest

from ml_offload.backends.base import ExitCallback
from ml_offload.backends.fake import FakeProcess
from ml_offload.config import SchedulerSettings
from ml_offload.domain import DeploymentKind, ModelSpec, ModelState
from ml_offload.errors import EngineError, Unavailable
from ml_offload.gpu.simulated import SimulatedMonitor, no_gpu
from ml_offload.metrics import Metrics
from ml_offload.scheduler import Scheduler
from ml_offload.vram import MemoryEstimate

GIB = 2**30
MIB = 2**20


def Est(layer_bytes: tuple[int, ...]) -> MemoryEstimate:
    return MemoryEstimate(layer_bytes, output_bytes=0, gpu_compute_bytes=0, cpu_bytes=0)


def one_gib(spec: ModelSpec) -> MemoryEstimate:
    return Est((GIB // 4,) * 4)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    max_loaded: int = 2, budget: int = 100 * GIB, **kw: float
) -> tuple[Scheduler, dict[str, FakeProcess], Clock]:
    procs: dict[str, FakeProcess] = {}
    clock = Clock()

    def factory(spec: ModelSpec, on_exit: ExitCallback) -> FakeProcess:
        procs[spec.name] = FakeProcess(spec, on_exit, start_delay_s=0.01)
        return procs[spec.name]

    settings = SchedulerSettings(max_loaded_models=max_loaded, queue_timeout_s=0.5, **kw)
    sched = Scheduler(
        settings,
        factory,
        Metrics(),
        budget_bytes=budget,
        estimate=one_gib,
        monitor=no_gpu(),
        clock=clock,
    )
    return sched, procs, clock


def spec(name: str, **kw: object) -> ModelSpec:
    values: dict[str, object] = {"parallel": 2, **kw}
    return ModelSpec(name=name, path=Path(f"/m/{name}.gguf"), **values)  # type: ignore[arg-type]


async def test_concurrent_requests_share_one_start() -> None:
    sched, procs, _ = make()
    a = spec("a")

    async def use() -> str:
        async with sched.lease(a) as url:
            return url

    urls = await asyncio.gather(use(), use(), use())
    assert set(urls) == {"http://fake/a"} and procs["a"].starts == 1


async def test_lru_idle_model_is_evicted_at_the_cap() -> None:
    sched, procs, clock = make(max_loaded=2)
    for name in ("a", "b"):
        await sched.load(spec(name))
        clock.now += 10
    await sched.load(spec("c"))
    assert procs["a"].state is ModelState.STOPPED
    assert procs["b"].state is ModelState.READY and procs["c"].state is ModelState.READY


async def test_pinned_model_is_not_evicted() -> None:
    sched, procs, clock = make(max_loaded=2)
    await sched.load(spec("a"), pin=True)
    clock.now += 10
    await sched.load(spec("b"))
    clock.now += 10
    await sched.load(spec("c"))
    assert procs["a"].state is ModelState.READY and procs["b"].state is ModelState.STOPPED


async def test_busy_models_make_the_load_wait_then_503() -> None:
    sched, _, _ = make(max_loaded=1)
    async with sched.lease(spec("a")):
        with pytest.raises(Unavailable) as exc:
            await sched.load(spec("b"))
    assert exc.value.retry_after_s == 1


async def test_load_waits_for_a_busy_model_to_finish() -> None:
    sched, procs, _ = make(max_loaded=1)
    a = spec("a")

    async def hold() -> None:
        async with sched.lease(a):
            await asyncio.sleep(0.1)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.05)
    await sched.load(spec("b"))
    await holder
    assert procs["a"].state is ModelState.STOPPED and procs["b"].state is ModelState.READY


async def test_idle_ttl_unloads() -> None:
    sched, procs, clock = make(reap_interval_s=0.01)
    await sched.start()
    try:
        await sched.load(spec("a", ttl_s=30))
        await sched.load(spec("b", ttl_s=0))
        clock.now += 31
        await asyncio.sleep(0.05)
        assert procs["a"].state is ModelState.STOPPED
        assert procs["b"].state is ModelState.READY  # ttl 0 never unloads
    finally:
        await sched.close()


async def test_crash_is_reported_and_next_request_restarts() -> None:
    sched, procs, _ = make()
    a = spec("a")
    await sched.load(a)
    procs["a"].crash()
    assert sched.status([a])[0].state is ModelState.FAILED
    async with sched.lease(a) as url:
        assert url == "http://fake/a"
    assert procs["a"].starts == 2


async def test_failed_start_reaches_every_waiter() -> None:
    procs: dict[str, FakeProcess] = {}

    def factory(s: ModelSpec, on_exit: ExitCallback) -> FakeProcess:
        procs[s.name] = FakeProcess(s, on_exit, start_delay_s=0.01, fail_start=True)
        return procs[s.name]

    sched = Scheduler(
        SchedulerSettings(),
        factory,
        Metrics(),
        budget_bytes=GIB * 100,
        estimate=one_gib,
        monitor=no_gpu(),
    )
    a = spec("a")

    async def use() -> None:
        async with sched.lease(a):
            pass

    results = await asyncio.gather(use(), use(), return_exceptions=True)
    assert all(isinstance(r, EngineError) for r in results)
    assert procs["a"].starts == 1


async def test_model_bigger_than_budget_is_refused_with_reason() -> None:
    sched, procs, _ = make(budget=GIB // 2)
    with pytest.raises(Unavailable, match="host memory"):
        await sched.load(spec("a"))
    assert procs["a"].starts == 0


async def test_unload_all_and_status() -> None:
    sched, _, _ = make(max_loaded=3)
    await sched.load(spec("a"))
    await sched.load(spec("b"))
    assert sorted(await sched.unload_all()) == ["a", "b"]
    assert all(s.state is ModelState.STOPPED for s in sched.status([spec("a"), spec("b")]))


async def test_two_simulated_gpus_evict_the_right_one_and_split_the_right_one() -> None:
    """Two 1 GiB devices; three models that do not all fit: `big` must be split over both
    devices, and loading it evicts the least recently used idle model, not the pinned one."""
    sizes = {
        "small-a": Est((100 * MIB,) * 4),
        "small-b": Est((100 * MIB,) * 4),
        "big": Est((240 * MIB,) * 6),
    }
    monitor = SimulatedMonitor([("sim0", GIB), ("sim1", GIB)])
    procs: dict[str, FakeProcess] = {}

    def factory(s: ModelSpec, on_exit: ExitCallback) -> FakeProcess:
        procs[s.name] = FakeProcess(s, on_exit)
        return procs[s.name]

    clock = Clock()
    sched = Scheduler(
        SchedulerSettings(max_loaded_models=4),
        factory,
        Metrics(),
        budget_bytes=64 * GIB,
        estimate=lambda s: sizes[s.name],
        monitor=monitor,
        reserve_bytes=64 * MIB,
        clock=clock,
    )
    await sched.load(spec("small-a"), pin=True)
    clock.now += 1
    await sched.load(spec("small-b"))
    placed = {s.name: s.device_bytes for s in sched.loaded()}
    assert set(placed["small-a"]) != set(placed["small-b"])  # each on the emptier device
    on_b = next(iter(placed["small-b"]))
    split_b = procs["small-b"].launch.tensor_split  # type: ignore[union-attr]
    assert split_b[on_b] == 1.0 and sum(split_b) == 1.0  # the engine is told which GPU
    clock.now += 1
    await sched.load(spec("big"))
    status = {s.name: s for s in sched.loaded()}
    assert procs["small-b"].state is ModelState.STOPPED, "the idle, unpinned model is evicted"
    assert status["small-a"].state is ModelState.READY, "the pinned model stays"
    big = status["big"]
    assert big.gpu_layers == big.layers == 7 and len(big.device_bytes) == 2, "split over both"
    assert procs["big"].launch is not None and len(procs["big"].launch.tensor_split) == 2
    for d in monitor.devices():
        assert d.used_bytes <= d.total_bytes - 64 * MIB


async def test_partial_offload_when_a_model_is_too_big_for_the_gpus() -> None:
    monitor = SimulatedMonitor([("sim0", GIB)])
    procs: dict[str, FakeProcess] = {}

    def factory(s: ModelSpec, on_exit: ExitCallback) -> FakeProcess:
        procs[s.name] = FakeProcess(s, on_exit)
        return procs[s.name]

    sched = Scheduler(
        SchedulerSettings(),
        factory,
        Metrics(),
        budget_bytes=64 * GIB,
        estimate=lambda s: Est((300 * MIB,) * 8),
        monitor=monitor,
    )
    status = await sched.load(spec("huge"))
    assert status.gpu_layers == 4 and status.host_bytes == 5 * 300 * MIB  # head + 3 blocks
    assert procs["huge"].launch is not None and procs["huge"].launch.gpu_layers == 4


async def test_remote_deployments_are_not_capped_like_local_engines() -> None:
    """8 slots + 64 queued is our engines' default; a remote server or cloud provider queues on
    its own (issue 11): 100 requests at once all run, unless `max_concurrency` says otherwise."""
    sched, _, _ = make(queue_size=64)
    cloud = ModelSpec("cloud", kind=DeploymentKind.CLOUD, url="https://api.example.com")
    capped = ModelSpec("capped", kind=DeploymentKind.REMOTE, url="http://x", max_concurrency=1)
    local = spec("local", parallel=8)  # 8 slots
    release = asyncio.Event()

    async def hold(model: ModelSpec) -> None:
        async with sched.lease(model):
            await release.wait()

    held = [asyncio.create_task(hold(cloud)) for _ in range(100)]
    held += [asyncio.create_task(hold(capped)) for _ in range(3)]
    held += [asyncio.create_task(hold(local)) for _ in range(20)]
    await asyncio.sleep(0.1)
    by_name = {s.name: s for s in sched.status([cloud, capped, local])}
    assert (by_name["cloud"].in_flight, by_name["cloud"].queued, by_name["cloud"].slots) == (
        100,
        0,
        None,
    )
    assert (by_name["capped"].in_flight, by_name["capped"].queued) == (1, 2)
    assert (by_name["local"].in_flight, by_name["local"].queued) == (8, 12)
    release.set()
    await asyncio.gather(*held)
    await sched.close()


def test_status_of_an_unused_model_creates_no_process() -> None:
    sched, procs, _ = make()
    spec = ModelSpec("never", path=Path("/m/never.gguf"), parallel=3, pinned=True)
    [status] = sched.status([spec])
    assert (status.state, status.slots, status.pinned) == (ModelState.STOPPED, 3, True)
    assert status.estimate_bytes == GIB and status.layers == one_gib(spec).layers
    assert sched.estimate(spec) is not None
    remote = ModelSpec("far", kind=DeploymentKind.REMOTE, url="http://127.0.0.1:9/v1/")
    assert sched.status([remote])[0].state == ModelState.READY  # a server elsewhere: ready
    assert sched.status([remote])[0].base_url == "http://127.0.0.1:9/v1"
    assert procs == {}, "reading a model's status made no process"


async def test_a_dead_engine_found_by_a_request_is_replaced_once() -> None:
    sched, procs, _ = make()
    a = spec("a")
    url = (await sched.load(a)).base_url
    assert url is not None
    assert not await sched.replace_dead(a, url, refused=False)  # alive: a dropped connection
    assert procs["a"].stops == 0
    assert await sched.replace_dead(a, url, refused=True)  # refused: dead, stopped
    assert procs["a"].stops == 1 and sched.state(a) is ModelState.STOPPED
    async with sched.lease(a) as again:
        assert again and procs["a"].starts == 2
    assert await sched.replace_dead(a, "http://old-engine", refused=True)  # already replaced
    assert procs["a"].stops == 1 and sched.state(a) is ModelState.READY
    procs["a"].crash()
    assert await sched.replace_dead(a, url, refused=False)  # its process exited
    remote = ModelSpec("r", kind=DeploymentKind.REMOTE, url="http://127.0.0.1:9")
    assert not await sched.replace_dead(remote, "http://127.0.0.1:9", refused=True)  # not ours


def ollama(name: str) -> ModelSpec:
    return ModelSpec(name, kind=DeploymentKind.OLLAMA, url="http://127.0.0.1:11434")


async def test_models_held_by_ollama_count_toward_the_loaded_cap() -> None:
    """max_loaded_models counts Ollama-held models too: loading one unloads the least recently
    used idle model, and loading an engine can unload an Ollama model."""
    sched, procs, clock = make(max_loaded=2)
    await sched.load(spec("a"))
    clock.now += 1
    await sched.load(ollama("o"))
    clock.now += 1
    await sched.load(ollama("p"))  # at the cap: a (oldest) goes
    assert procs["a"].state is ModelState.STOPPED
    assert procs["o"].state is ModelState.READY and procs["p"].state is ModelState.READY
    clock.now += 1
    await sched.load(spec("b"))  # an engine: o (oldest) goes
    assert procs["o"].state is ModelState.STOPPED and procs["p"].state is ModelState.READY
    await sched.close()


async def test_an_ollama_model_waits_for_room_under_the_cap_then_503() -> None:
    sched, procs, _ = make(max_loaded=1)
    a = spec("a")
    release = asyncio.Event()

    async def hold() -> None:
        async with sched.lease(a):
            await release.wait()

    held = asyncio.create_task(hold())
    await asyncio.sleep(0.05)
    with pytest.raises(Unavailable, match="max_loaded_models"):
        await sched.load(ollama("o"))
    release.set()
    await held
    await sched.load(ollama("o"))  # a is idle now: unloaded for it
    assert procs["a"].state is ModelState.STOPPED and procs["o"].state is ModelState.READY
    await sched.close()


async def test_a_model_ollama_dropped_is_stopped_here_unless_used_since() -> None:
    sched, procs, clock = make()
    o = ollama("o")
    async with sched.lease(o):
        pass
    assert procs["o"].requests_done == 1  # told, so Ollama's keep-alive is renewed
    assert not await sched.dropped_elsewhere("o", clock.now)  # probed before that request
    clock.now += 5
    assert not await sched.dropped_elsewhere("local", clock.now)  # never loaded
    assert await sched.dropped_elsewhere("o", clock.now)
    assert sched.state(o) is ModelState.STOPPED and procs["o"].stops == 1
    async with sched.lease(o) as url:  # the next request loads it again
        assert url and procs["o"].starts == 2
    await sched.close()


def on_one_gpu(
    sizes: dict[str, MemoryEstimate], *, budget: int, queue_timeout_s: float
) -> tuple[Scheduler, dict[str, FakeProcess]]:
    """One simulated 1 GiB device and `budget` bytes of host memory."""
    procs: dict[str, FakeProcess] = {}

    def factory(s: ModelSpec, on_exit: ExitCallback) -> FakeProcess:
        procs[s.name] = FakeProcess(s, on_exit, start_delay_s=0.01)
        return procs[s.name]

    sched = Scheduler(
        SchedulerSettings(queue_timeout_s=queue_timeout_s),
        factory,
        Metrics(),
        budget_bytes=budget,
        estimate=lambda s: sizes[s.name],
        monitor=SimulatedMonitor([("sim0", GIB)]),
    )
    return sched, procs


async def test_a_load_that_fits_does_not_queue_behind_one_waiting_for_room() -> None:
    """`busy` holds 600 MiB of a 1 GiB GPU; `big` (600 MiB, no host memory to spare) waits for
    it to finish, while `small` (300 MiB) fits beside it: small is ready first, then big,
    once busy is done (busy keeps its request until small is ready, or 5 s at most)."""
    sizes = {n: Est((mib * MIB,) * 2) for n, mib in (("busy", 300), ("big", 300), ("small", 150))}
    sched, procs = on_one_gpu(sizes, budget=0, queue_timeout_s=30)
    order: list[str] = []
    small_ready = asyncio.Event()

    async def hold() -> None:
        async with sched.lease(spec("busy")):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(small_ready.wait(), 5)

    async def load(name: str) -> None:
        await sched.load(spec(name))
        order.append(name)

    await sched.load(spec("busy"))
    holder = asyncio.create_task(hold())
    big = asyncio.create_task(load("big"))
    await asyncio.sleep(0.05)  # big is waiting for room
    assert procs["big"].starts == 0 and not big.done()
    await load("small")
    small_ready.set()
    await asyncio.gather(holder, big)
    print(f"finished in order: {order}")
    assert order == ["small", "big"]
    assert procs["busy"].state is ModelState.STOPPED, "evicted for big once idle"
    assert procs["big"].state is ModelState.READY and procs["big"].starts == 1
    await sched.close()


async def test_a_model_that_can_never_fit_is_refused_at_once_with_the_reason() -> None:
    """Bigger than the GPU plus the host budget: refused without waiting for the busy model
    (whose unloading could not make room either), with the reason and no Retry-After."""
    sizes = {"busy": Est((100 * MIB,) * 2), "huge": Est((GIB,) * 3)}
    sched, procs = on_one_gpu(sizes, budget=GIB, queue_timeout_s=30)
    release = asyncio.Event()

    async def hold() -> None:
        async with sched.lease(spec("busy")):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.05)
    with pytest.raises(Unavailable, match="every other model unloaded") as exc:
        await asyncio.wait_for(sched.load(spec("huge")), 10)  # a guard; waiting would be 30 s
    print(f"refused: {exc.value.message}")
    assert exc.value.retry_after_s is None and "host memory" in exc.value.message
    assert procs["huge"].starts == 0
    release.set()
    await holder
    await sched.close()
