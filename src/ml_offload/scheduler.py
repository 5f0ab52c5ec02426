"""Owns the runtime state of every model: loads on demand, queues, evicts, unloads idle ones.

Decisions are pure functions in `placement.py`; this module carries them out. Loads are
serialised by one lock (one placement decision at a time), released while a load waits for
busy models to free room, so loads that fit never queue behind one that does not. Requests
for ready models take only their model's slot gate: no lock and no I/O on that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ml_offload.backends.base import EngineProcess, Launch, ProcessFactory
from ml_offload.config import SchedulerSettings
from ml_offload.domain import ModelSpec, ModelState, ModelStatus
from ml_offload.errors import MloError, NotFound, Unavailable
from ml_offload.gpu.base import GpuMonitor
from ml_offload.metrics import Metrics
from ml_offload.placement import (
    DeviceRoom,
    Estimate,
    LoadedView,
    Placement,
    cap_victim,
    idle_expired,
    place,
    tensor_split,
)
from ml_offload.slots import SlotGate

log = logging.getLogger(__name__)

LOADED_STATES = (ModelState.STARTING, ModelState.READY)
DEATH_CHECK_S = 0.5  # how long a dropped connection waits for the engine's exit to be seen


@dataclass(slots=True)
class _Entry:
    spec: ModelSpec
    process: EngineProcess
    gate: SlotGate
    estimate: Estimate | None
    pinned: bool
    last_used: float
    loading: asyncio.Task[str] | None = None
    ready_at: float | None = None
    load_time_s: float | None = None
    placement: Placement | None = None
    measured_bytes: int | None = None

    def view(self) -> LoadedView:
        p = self.placement or Placement()
        return LoadedView(
            self.spec.name,
            p.host_bytes,
            self.gate.busy,
            self.pinned,
            self.last_used,
            self.spec.ttl_s,
            p.device_bytes,
        )

    @property
    def estimate_bytes(self) -> int:
        p = self.placement
        if p is not None:
            return p.host_bytes + sum(b for _, b in p.device_bytes)
        return 0 if self.estimate is None else self.estimate.cpu_total_bytes()


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        factory: ProcessFactory,
        metrics: Metrics,
        *,
        budget_bytes: int,
        estimate: Callable[[ModelSpec], Estimate],
        monitor: GpuMonitor,
        reserve_bytes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = settings
        self._factory = factory
        self._metrics = metrics
        self.budget_bytes = budget_bytes
        self._estimate = estimate
        self.monitor = monitor
        self.reserve_bytes = reserve_bytes
        self._gpu_factor: dict[str, float] = {}  # measured / estimated, learned per model
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._load_lock = asyncio.Lock()
        self._room_waiters: list[asyncio.Future[None]] = []  # loads waiting for room
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(e.process.stop() for e in self._entries.values()))

    @contextlib.asynccontextmanager
    async def lease(self, spec: ModelSpec) -> AsyncIterator[str]:
        """Hold one of the model's slots, loading it if needed; yields the engine's base URL."""
        entry = self._entry(spec)
        await entry.gate.acquire(self._s.queue_timeout_s)
        try:
            yield await self._ensure_loaded(entry)
        finally:
            entry.gate.release()
            entry.last_used = self._clock()
            entry.process.request_done()
            if not entry.gate.busy:
                self._room_freed()

    async def replace_dead(self, spec: ModelSpec, base_url: str, *, refused: bool) -> bool:
        """The engine at `base_url` refused the connection (`refused`) or dropped it before
        answering. For an engine we run, a refusal means it died (its exit may not be noticed
        yet), and a drop does when its process has exited: stop it, so that the next lease
        starts a fresh one. True when the caller should send the request again."""
        entry = self._entries.get(spec.name)
        if entry is None or not spec.is_local:
            return False
        if entry.process.base_url not in (None, base_url):
            return True  # another request already replaced it
        if not refused and not await entry.process.exited(DEATH_CHECK_S):
            return False  # alive: the drop was about this request, not a dead engine
        await self._unload(entry, "dead")
        return True

    async def dropped_elsewhere(self, name: str, seen_at: float) -> bool:
        """The server holding `name` (Ollama's `/api/ps`, read at `seen_at`) no longer has it
        loaded: unless it was loaded or used since, it is stopped here too (the next request
        loads it again) rather than shown ready. True when it was."""
        entry = self._entries.get(name)
        if entry is None or entry.spec.is_local or entry.process.state is not ModelState.READY:
            return False
        if entry.gate.busy or max(entry.ready_at or 0.0, entry.last_used) >= seen_at:
            return False
        await self._unload(entry, "dropped")
        return True

    async def load(self, spec: ModelSpec, *, pin: bool | None = None) -> ModelStatus:
        entry = self._entry(spec)
        if pin is not None:
            entry.pinned = pin
        await self._ensure_loaded(entry)
        entry.last_used = self._clock()
        return self._status(entry)

    async def unload(self, name: str) -> ModelStatus:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not loaded")
        await self._unload(entry, "explicit")
        return self._status(entry)

    async def forget(self, name: str) -> None:
        """Unload `name` and drop its state (its spec changed or it is gone: a config reload);
        its next request starts it afresh from the registry's new spec."""
        entry = self._entries.pop(name, None)
        if entry is not None:
            await self._unload(entry, "reload")

    async def unload_all(self) -> list[str]:
        names = [e.spec.name for e in self._held() if e.process.state in LOADED_STATES]
        await asyncio.gather(*(self._unload(self._entries[n], "explicit") for n in names))
        return names

    def set_pinned(self, spec: ModelSpec, pinned: bool) -> ModelStatus:
        entry = self._entry(spec)
        entry.pinned = pinned
        return self._status(entry)

    def status(self, specs: list[ModelSpec]) -> list[ModelStatus]:
        """Each model's state; a model never used has none yet, and asking creates none."""
        out = []
        for spec in specs:
            entry = self._entries.get(spec.name)
            out.append(self._status(entry) if entry is not None else self._unused(spec))
        return out

    def state(self, spec: ModelSpec) -> ModelState:
        entry = self._entries.get(spec.name)
        if entry is None:
            return ModelState.READY if _elsewhere(spec) else ModelState.STOPPED
        return entry.process.state

    def estimate(self, spec: ModelSpec) -> Estimate | None:
        entry = self._entries.get(spec.name)
        if entry is not None:
            return entry.estimate
        return self._estimate(spec) if spec.is_local else None

    def loaded(self) -> list[ModelStatus]:
        return [
            self._status(e)
            for e in self._entries.values()
            if e.process.state is not ModelState.STOPPED
        ]

    # -- internals -------------------------------------------------------------------------

    def _entry(self, spec: ModelSpec) -> _Entry:
        entry = self._entries.get(spec.name)
        if entry is not None and _moved(entry, spec):
            entry = None  # a server elsewhere now at another URL (a fleet node back on a new one)
        if entry is None:
            entry = _Entry(
                spec=spec,
                process=self._factory(spec, self._on_exit),
                gate=SlotGate(spec.name, spec.concurrency, self._s.queue_size),
                estimate=self._estimate(spec) if spec.is_local else None,
                pinned=spec.pinned,
                last_used=self._clock(),
            )
            self._entries[spec.name] = entry
        return entry

    def _unused(self, spec: ModelSpec) -> ModelStatus:
        """The status of a model that has no entry yet (what a new entry would report): a
        server that runs elsewhere and is not loaded by us is ready (backends/remote.py)."""
        est = self.estimate(spec)
        elsewhere = _elsewhere(spec)
        return ModelStatus(
            name=spec.name,
            state=ModelState.READY if elsewhere else ModelState.STOPPED,
            base_url=elsewhere,
            slots=spec.concurrency,
            estimate_bytes=0 if est is None else est.cpu_total_bytes(),
            layers=None if est is None else est.layers,
            pinned=spec.pinned,
        )

    def _held(self) -> list[_Entry]:
        """Models we load and unload: our engines and models in an external Ollama."""
        return [e for e in self._entries.values() if e.spec.holds_memory]

    async def _ensure_loaded(self, entry: _Entry) -> str:
        url = entry.process.base_url
        if url is not None and entry.process.state is ModelState.READY:
            return url
        if entry.loading is None or entry.loading.done():
            entry.loading = asyncio.create_task(self._load(entry))
        try:
            return await asyncio.shield(entry.loading)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller went away
            raise Unavailable(
                f"model {entry.spec.name!r} was unloaded while loading; retry", retry_after_s=1
            ) from None

    async def _load(self, entry: _Entry) -> str:
        """Make room and start the engine under the load lock; while busy models hold the
        room it needs, wait without the lock (others may load meanwhile), then decide again,
        up to the queue deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._s.queue_timeout_s  # real time, not the idle clock
        while True:
            freed = self._watch_room()  # before deciding: room freed after it wakes us
            try:
                async with self._load_lock:
                    if entry.process.state is ModelState.READY and entry.process.base_url:
                        return entry.process.base_url
                    busy = await self._make_room(entry)
                    if busy is None:
                        return await self._start(entry)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Unavailable(
                        f"cannot load model {entry.spec.name!r}: {busy}", retry_after_s=1
                    )
                await asyncio.wait([freed], timeout=remaining)
            finally:
                self._unwatch_room(freed)

    async def _start(self, entry: _Entry) -> str:
        started = self._clock()
        url = await entry.process.ensure_ready(self._s.load_timeout_s, self._launch(entry))
        self._measure(entry)
        entry.ready_at = self._clock()
        entry.load_time_s = entry.ready_at - started
        entry.last_used = entry.ready_at
        if entry.spec.is_local:
            self._metrics.load_time.labels(entry.spec.name).observe(entry.load_time_s)
            log.info("model %s ready in %.2fs at %s", entry.spec.name, entry.load_time_s, url)
        return url

    async def _make_room(self, entry: _Entry) -> str | None:
        """Place the model (see placement.py), evicting as told. None when placed; the reason
        when busy models hold the room it needs (wait for them); Unavailable when waiting
        cannot help."""
        if entry.spec.is_local:
            return await self._make_memory_room(entry)
        if entry.spec.holds_memory:
            return await self._make_count_room(entry)
        return None

    async def _make_memory_room(self, entry: _Entry) -> str | None:
        assert entry.estimate is not None
        while True:
            plan = self._plan(entry, entry.estimate)
            if plan.evict:
                await self._unload(self._entries[plan.evict[0]], "evicted")
                continue  # re-plan: states may have changed while stopping
            if plan.refused is None:
                entry.placement = plan
                self.monitor.track(entry.spec.name, dict(plan.device_bytes))
                return None
            if plan.wait:
                return plan.refused
            raise Unavailable(f"cannot load model {entry.spec.name!r}: {plan.refused}")

    def _others_loaded(self, entry: _Entry) -> list[_Entry]:
        """The loaded models besides `entry` that count toward `max_loaded_models`: our
        engines and the models we hold in an external Ollama."""
        return [e for e in self._held() if e is not entry and e.process.state in LOADED_STATES]

    async def _make_count_room(self, entry: _Entry) -> str | None:
        """A model held by Ollama takes no memory we place, but counts toward the cap: unload
        the least recently used idle model while the cap is reached; wait while all are busy."""
        while True:
            views = [e.view() for e in self._others_loaded(entry)]
            victim = cap_victim(views, self._s.max_loaded_models)
            if victim is None:
                return None
            if not victim:
                return (
                    f"{len(views)} models are loaded (scheduler.max_loaded_models) "
                    f"and all are busy or pinned"
                )
            await self._unload(self._entries[victim], "evicted")

    def _watch_room(self) -> asyncio.Future[None]:
        freed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.append(freed)
        return freed

    def _unwatch_room(self, freed: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._room_waiters.remove(freed)

    def _room_freed(self) -> None:
        """A model went idle, stopped or died: loads waiting for room decide again."""
        waiters, self._room_waiters = self._room_waiters, []
        for freed in waiters:
            if not freed.done():
                freed.set_result(None)

    def _plan(self, entry: _Entry, estimate: Estimate) -> Placement:
        others = self._others_loaded(entry)
        planned: dict[int, int] = {}
        for e in others:
            for index, n in (e.placement or Placement()).device_bytes:
                planned[index] = planned.get(index, 0) + n
        rooms = [  # live free memory, less what models still loading will take
            DeviceRoom(d.index, min(d.free_bytes, d.total_bytes - planned.get(d.index, 0)))
            for d in self.monitor.devices()
        ]
        host_used = sum((e.placement or Placement()).host_bytes for e in others)
        return place(
            estimate,
            rooms,
            [e.view() for e in others],
            reserve_bytes=self.reserve_bytes,
            host_free_bytes=max(0, self.budget_bytes - host_used),
            max_loaded=self._s.max_loaded_models,
            max_gpu_layers=entry.spec.max_gpu_layers,
            gpu_factor=self._gpu_factor.get(entry.spec.name, 1.0),
        )

    def _launch(self, entry: _Entry) -> Launch | None:
        p = entry.placement
        if p is None:
            return None
        n_devices = len(self.monitor.devices())
        if n_devices < 2 or not p.gpu_layers:
            return Launch(gpu_layers=p.gpu_layers)
        # with several GPUs the split says which ones, even when one device takes every layer
        return Launch(p.gpu_layers, tuple(tensor_split(p.layers_per_device, n_devices)))

    def _measure(self, entry: _Entry) -> None:
        """Compare the GPU estimate with what the engine really holds (NVML per process) and
        keep the ratio, so the next placement of this model is better."""
        pid, p = entry.process.pid, entry.placement
        if pid is None or p is None or not p.device_bytes:
            return
        held = self.monitor.process_bytes().get(pid)
        planned = sum(b for _, b in p.device_bytes)
        if held:
            entry.measured_bytes = held
            self._gpu_factor[entry.spec.name] = max(1.0, held / planned)

    async def _unload(self, entry: _Entry, reason: str) -> None:
        if entry.process.state is ModelState.STOPPED:
            return
        log.info("unloading model %s (%s)", entry.spec.name, reason)
        await entry.process.stop()
        self.monitor.untrack(entry.spec.name)
        entry.ready_at, entry.placement, entry.measured_bytes = None, None, None
        self._metrics.evictions.labels(entry.spec.name, reason).inc()
        self._room_freed()

    def _on_exit(self, spec: ModelSpec, message: str) -> None:
        """The engine died on its own: requests in flight fail, the next one restarts it."""
        entry = self._entries.get(spec.name)
        if entry is not None:
            entry.ready_at, entry.placement = None, None
            self.monitor.untrack(spec.name)
        self._metrics.errors.labels(spec.name, "engine_exit").inc()
        self._room_freed()

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._s.reap_interval_s)
            try:
                await self._reap_once()
            except MloError as exc:  # keep reaping; a failed stop is logged, not fatal
                log.warning("idle unload failed: %s", exc.message)

    async def _reap_once(self) -> None:
        ready = [e.view() for e in self._held() if e.process.state is ModelState.READY]
        for name in idle_expired(ready, self._clock()):
            entry = self._entries[name]
            if not entry.gate.busy and (entry.loading is None or entry.loading.done()):
                await self._unload(entry, "idle")

    def _status(self, e: _Entry) -> ModelStatus:
        now = self._clock()
        state = e.process.state
        return ModelStatus(
            name=e.spec.name,
            state=state,
            in_flight=e.gate.in_flight,
            queued=e.gate.queued,
            slots=e.gate.slots,
            pid=e.process.pid,
            base_url=e.process.base_url,
            idle_s=None if e.gate.in_flight or state is not ModelState.READY else now - e.last_used,
            loaded_for_s=None if e.ready_at is None else now - e.ready_at,
            estimate_bytes=e.estimate_bytes,
            measured_bytes=e.measured_bytes,
            gpu_layers=(e.placement.gpu_layers if e.placement else None),
            layers=(e.estimate.layers if e.estimate else None),
            device_bytes=dict(e.placement.device_bytes) if e.placement else {},
            host_bytes=e.placement.host_bytes if e.placement else None,
            pinned=e.pinned,
            last_error=e.process.last_error,
            load_time_s=e.load_time_s,
        )


def _elsewhere(spec: ModelSpec) -> str | None:
    """The address of a server that runs elsewhere and that we do not load (always ready,
    as backends/remote.py says), or None."""
    if spec.url is None or spec.kind.holds_memory:
        return None
    return spec.url.rstrip("/")


def _moved(entry: _Entry, spec: ModelSpec) -> bool:
    """`spec` is a server elsewhere that moved to another URL, and nothing is using the old."""
    return not spec.holds_memory and entry.spec.url != spec.url and not entry.gate.busy
