"""The status service: typed views of models, deployments, memory and the gateway's health.

Every view (`wire/native.py`) is built here and only read elsewhere: the native routes serialise
them, the CLI validates them, and the Prometheus gauges are refreshed from them at scrape time.
Reading has no side effects: asking about a model never creates its runtime state.

`reveal=False` views carry names and state only: no model path, upstream URL, engine address,
pid or error text (which may name them). The routes decide who may see them (admin keys, or
everyone when auth is off).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, replace

from ml_offload import __version__
from ml_offload.backends.probe import BackendMonitor, Probe
from ml_offload.backends.standby import Standby
from ml_offload.config import Settings
from ml_offload.domain import (
    FLEET_SOURCE,
    DeploymentKind,
    ModelSpec,
    ModelState,
    ModelStatus,
    ServedModel,
)
from ml_offload.errors import safe_url
from ml_offload.fleet.routing import FleetRoutes
from ml_offload.metrics import DiskGauge, ModelLoad, RuntimeGauges
from ml_offload.placement import Estimate
from ml_offload.registry import ModelRegistry, unavailable_reason
from ml_offload.router import Router
from ml_offload.scheduler import Scheduler
from ml_offload.storage.disk import disk_space
from ml_offload.wire.native import (
    BackendList,
    BackendView,
    DeviceView,
    DiskView,
    EstimateView,
    HealthView,
    HostView,
    LoadView,
    MemoryView,
    ModelCounts,
    ModelList,
    ModelView,
    PlacedModelView,
    ProbeView,
)


def _on_fleet(served: ServedModel, warm: bool) -> tuple[ModelSpec, ModelStatus]:
    """A model the fleet's nodes serve, as a gateway lists it: ready where loaded on a node."""
    spec = ModelSpec(
        served.name, DeploymentKind.REMOTE, aliases=served.aliases, source=FLEET_SOURCE
    )
    state = ModelState.READY if warm else ModelState.STOPPED
    return spec, ModelStatus(served.name, state, slots=None, estimate_bytes=served.estimate_bytes)


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class StatusService:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        scheduler: Scheduler,
        router: Router,
        probes: BackendMonitor,
        *,
        started_at: float,
        fleet: FleetRoutes | None = None,
        standby: Standby | None = None,
    ) -> None:
        """`fleet`: a gateway's routes: the models its nodes serve are listed with its own."""
        self._fleet = fleet
        self._standby = standby
        self._settings = settings
        self._registry = registry
        self._scheduler = scheduler
        self._router = router
        self._probes = probes
        self.started_at = started_at  # unix time

    # -- views -----------------------------------------------------------------------------

    def health(self, *, reveal: bool) -> HealthView:
        loaded = self._scheduler.loaded()
        return HealthView(
            version=__version__,
            uptime_s=round(time.time() - self.started_at, 3),
            pid=os.getpid(),
            models=ModelCounts(
                known=len(self._registry.all()),
                loaded=sum(s.state is ModelState.READY for s in loaded),
            ),
            disk=self._disk(reveal),
        )

    def models(self, *, reveal: bool, specs: Sequence[ModelSpec] | None = None) -> ModelList:
        """`specs` (default: every model, on a gateway its nodes' too) as the model list."""
        fleet = self._fleet_models()
        specs = self.specs() if specs is None else list(specs)
        own = [sp for sp in specs if not sp.on_fleet_node]
        statuses = self._scheduler.status(own)
        data = [self._model(sp, st, reveal) for sp, st in zip(own, statuses, strict=True)]
        wanted = {sp.name for sp in specs}
        data.extend(self._model(sp, st, reveal) for sp, st in fleet if sp.name in wanted)
        return ModelList(data=data)

    def specs(self) -> list[ModelSpec]:
        """Every model a request may name here: its own, then those only its nodes serve."""
        return self._registry.all() + [sp for sp, _ in self._fleet_models()]

    def _fleet_models(self) -> list[tuple[ModelSpec, ModelStatus]]:
        """The models only this gateway's nodes serve, ready where loaded on one of them."""
        if self._fleet is None:
            return []
        own = {n for sp in self._registry.all() for n in sp.names}
        return [_on_fleet(m, warm) for m, warm in self._fleet.models() if m.name not in own]

    def model(self, name: str, *, reveal: bool) -> ModelView:
        """One model by name or alias (NotFound naming what exists)."""
        return self.view_of(self._registry.resolve(name), reveal=reveal)

    def view_of(self, spec: ModelSpec, *, reveal: bool) -> ModelView:
        return self._model(spec, self._scheduler.status([spec])[0], reveal)

    def backends(self, *, reveal: bool, specs: Sequence[ModelSpec] | None = None) -> BackendList:
        specs = self._registry.all() if specs is None else list(specs)
        statuses = self._scheduler.status(specs)
        return BackendList(
            data=[self._backend(sp, st, reveal) for sp, st in zip(specs, statuses, strict=True)]
        )

    def memory(self, *, reveal: bool) -> MemoryView:
        sched = self._scheduler
        placed = [st for st in sched.loaded() if st.layers is not None]
        devices = [
            DeviceView(
                **{**asdict(d), "uuid": d.uuid if reveal else None},
                models=_on_device(d.index, placed),
            )
            for d in sched.monitor.devices()
        ]
        return MemoryView(
            monitor=sched.monitor.name,
            reserve_bytes=sched.reserve_bytes,
            devices=devices,
            cpu=HostView(
                total_bytes=host_memory_bytes(),
                cores=os.cpu_count(),
                budget_bytes=sched.budget_bytes,
                used_estimate_bytes=sum(st.host_bytes or 0 for st in placed),
            ),
            models=[_placed(st) for st in placed],
        )

    def gauges(self) -> RuntimeGauges:
        """What the Prometheus collector reports at each scrape."""
        loaded = self._scheduler.loaded()
        return RuntimeGauges(
            loaded=sum(s.state is ModelState.READY and s.layers is not None for s in loaded),
            devices=self._scheduler.monitor.devices(),
            models=[ModelLoad(s.name, s.queued, s.in_flight) for s in loaded],
            disks=self._disk_gauges(),
        )

    def _disk_gauges(self) -> list[DiskGauge]:
        storage = self._settings.storage
        gauges = []
        for folder, path in (("data", storage.data_dir), ("models", storage.models_path)):
            space = disk_space(path, storage.low_disk_bytes)
            gauges.append(DiskGauge(folder, space.free_bytes, space.total_bytes, space.low))
        return gauges

    # -- parts -----------------------------------------------------------------------------

    def _disk(self, reveal: bool) -> DiskView:
        storage = self._settings.storage
        space = disk_space(storage.data_dir, storage.low_disk_bytes)
        return DiskView(
            path=str(storage.data_dir) if reveal else None,
            free_bytes=space.free_bytes,
            total_bytes=space.total_bytes,
            low=space.low,
        )

    def _model(self, spec: ModelSpec, st: ModelStatus, reveal: bool) -> ModelView:
        st = _honest(spec, st)
        return ModelView(
            id=spec.name,
            aliases=list(spec.aliases),
            source=spec.source,
            path=str(spec.path) if spec.path and reveal else None,
            url=safe_url(spec.url) if spec.url and reveal else None,
            ctx_size=spec.ctx_size,
            parallel=spec.parallel,
            ttl_s=spec.ttl_s,
            info=spec.info,
            estimate=_estimate(self._scheduler.estimate(spec)),
            state=st.state,
            in_flight=st.in_flight,
            queued=st.queued,
            slots=st.slots,
            pid=st.pid if reveal else None,
            idle_s=st.idle_s,
            loaded_for_s=st.loaded_for_s,
            estimate_bytes=st.estimate_bytes,
            measured_bytes=st.measured_bytes,
            gpu_layers=st.gpu_layers,
            layers=st.layers,
            device_bytes=st.device_bytes,
            host_bytes=st.host_bytes,
            pinned=st.pinned,
            last_error=st.last_error if reveal else None,
            load_time_s=st.load_time_s,
            standby_bytes=None if self._standby is None else self._standby.bytes_of(spec.name),
            base_url=st.base_url if spec.is_local and reveal else None,
        )

    def _backend(self, spec: ModelSpec, st: ModelStatus, reveal: bool) -> BackendView:
        st = _honest(spec, st)
        health = self._router.health(spec.name)
        cooling = self._router.cooling_s(spec.name)
        probe = self._probes.get(spec.name)
        target = spec.url or (str(spec.path) if spec.path else st.base_url)
        probed_ok = probe is None or probe.ok  # unreachable or broken when last probed: unhealthy
        return BackendView(
            model=spec.name,
            kind="llama.cpp" if spec.kind is DeploymentKind.LLAMACPP else spec.backend,
            target=safe_url(target) if target and reveal else None,
            state=st.state,
            healthy=cooling == 0 and st.state not in _BROKEN and probed_ok,
            cooling_s=round(cooling, 3),
            failures=health.failures,
            last_error=(health.last_error or st.last_error) if reveal else None,
            in_flight=st.in_flight,
            queued=st.queued,
            fallbacks=list(spec.fallbacks),
            probe=None if probe is None else self._probe(probe, reveal),
        )

    def _probe(self, probe: Probe, reveal: bool) -> ProbeView:
        load = probe.load
        return ProbeView(
            ok=probe.ok,
            age_s=round(self._probes.age_s(probe), 3),
            error=probe.error if reveal else None,
            model_id=probe.model_id,
            loaded=probe.loaded,
            vram_bytes=None if probe.loaded is None else probe.vram_bytes,
            load=None
            if load is None
            else LoadView(
                running=load.running, waiting=load.waiting, kv_cache_usage=load.kv_cache_usage
            ),
        )


_BROKEN = (ModelState.FAILED, ModelState.UNAVAILABLE)


def _honest(spec: ModelSpec, st: ModelStatus) -> ModelStatus:
    """A model that is not running and cannot start as configured is `unavailable`, with the
    reason as its error (a loaded engine keeps serving even if its file has gone since)."""
    if spec.holds_memory and st.state not in (ModelState.STOPPED, ModelState.FAILED):
        return st
    reason = unavailable_reason(spec)
    if reason is None:
        return st
    return replace(st, state=ModelState.UNAVAILABLE, last_error=reason)


def _estimate(est: Estimate | None) -> EstimateView | None:
    if est is None:
        return None
    return EstimateView(
        layers=est.layers,
        gpu_full_bytes=sum(est.layer_bytes) + est.output_bytes + est.gpu_compute_bytes,
        gpu_compute_bytes=est.gpu_compute_bytes,
        cpu_only_bytes=est.cpu_total_bytes(),
    )


def _on_device(index: int, placed: list[ModelStatus]) -> dict[str, int]:
    return {st.name: st.device_bytes[index] for st in placed if index in st.device_bytes}


def _placed(st: ModelStatus) -> PlacedModelView:
    return PlacedModelView.model_validate(st, from_attributes=True)  # its fields, by name
