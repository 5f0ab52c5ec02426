"""The composition root: picks concrete implementations from settings and wires them.

Nothing does work at import time; `Services.start()` opens the database, scans models and starts
the scheduler; `close()` stops every engine. Each part is entered on one `AsyncExitStack`, so a
start that fails part-way closes what it had opened, in reverse order.

The CLI opens the parts it needs here too (`open_database`, `open_registry`, `open_key_store`),
rather than each command opening the database itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from ml_offload.backends.base import EngineProcess, ExitCallback, ProcessFactory
from ml_offload.backends.command import CommandProcess
from ml_offload.backends.http import Upstream
from ml_offload.backends.llamacpp import Launcher, LlamaCppProcess, resolve_engine_kind
from ml_offload.backends.ollama import OllamaHeldModel
from ml_offload.backends.probe import PROBED, BackendMonitor
from ml_offload.backends.remote import RemoteServer
from ml_offload.backends.slot_files import SlotBounds
from ml_offload.backends.slot_keeper import ConversationSlots
from ml_offload.backends.standby import Standby
from ml_offload.config import SecuritySettings, Settings
from ml_offload.control import FolderWatch, ModelControl
from ml_offload.domain import ApiKey, DeploymentKind, ModelSpec
from ml_offload.errors import ConfigError, MloError
from ml_offload.fleet.membership import Membership, served_here
from ml_offload.fleet.routing import FleetRoutes, node_tls
from ml_offload.gpu.base import GpuMonitor
from ml_offload.gpu.select import open_monitor
from ml_offload.inference import InferenceService
from ml_offload.metrics import Metrics
from ml_offload.placement import Estimate
from ml_offload.registry import ModelRegistry
from ml_offload.router import Router, deployment_load
from ml_offload.scheduler import Scheduler
from ml_offload.security.audit import AuditLog, audit_path
from ml_offload.security.guard import Guard, insecure_bind
from ml_offload.security.keys import KeyStore
from ml_offload.security.limits import Limiter
from ml_offload.security.posture import sqlite_path
from ml_offload.security.quota import Quota
from ml_offload.security.redact import Redactor
from ml_offload.sizing import load_estimate
from ml_offload.status import StatusService, host_memory_bytes
from ml_offload.storage.db import Database
from ml_offload.storage.keys_repo import KeyRepository
from ml_offload.storage.models_repo import ModelRepository
from ml_offload.storage.nodes_repo import NodeRepository
from ml_offload.storage.responses_repo import ResponseRepository
from ml_offload.tracing import open_tracer

log = logging.getLogger(__name__)
Resolve = Callable[[str], ModelSpec]


def memory_budget(settings: Settings) -> int:
    """The configured budget, or 80% of host memory (the GPU-aware budget comes with NVML)."""
    return settings.scheduler.memory_budget_bytes or int(host_memory_bytes() * 0.8)


def spec_estimate(spec: ModelSpec, *, context_overhead_bytes: int = 0) -> Estimate:
    """What loading `spec` takes, as the engine is launched (see sizing.py)."""
    return load_estimate(spec, context_overhead_bytes=context_overhead_bytes)


@dataclass(frozen=True, slots=True)
class _Engines:
    """What the process factories need from settings, resolved once."""

    settings: Settings
    launcher: Launcher
    upstream: Upstream  # the pooled client: readiness probes, Ollama's load and unload
    slots: ConversationSlots  # llama.cpp engines' saved conversations
    standby: Standby  # stopped llama.cpp models' weights, held for their next load


def _llamacpp(engines: _Engines, spec: ModelSpec, on_exit: ExitCallback) -> EngineProcess:
    s = engines.settings
    return LlamaCppProcess(
        spec,
        on_exit,
        engine=s.engine,
        launcher=engines.launcher,
        log_dir=s.storage.logs_path,
        upstream=engines.upstream,
        slots=engines.slots.keeper(spec),
        standby=engines.standby,
    )


def _managed(engines: _Engines, spec: ModelSpec, on_exit: ExitCallback) -> EngineProcess:
    logs = engines.settings.storage.logs_path
    return CommandProcess(spec, on_exit, log_dir=logs, upstream=engines.upstream)


def _remote(engines: _Engines, spec: ModelSpec, on_exit: ExitCallback) -> EngineProcess:
    return RemoteServer(spec)


def _ollama(engines: _Engines, spec: ModelSpec, on_exit: ExitCallback) -> EngineProcess:
    return OllamaHeldModel(spec, engines.upstream)


# kind → what runs (or reaches) a deployment of that kind, as uvicorn's LOOP_SETUPS picks loops
PROCESS_FACTORIES: dict[
    DeploymentKind, Callable[[_Engines, ModelSpec, ExitCallback], EngineProcess]
] = {
    DeploymentKind.LLAMACPP: _llamacpp,
    DeploymentKind.MANAGED: _managed,
    DeploymentKind.REMOTE: _remote,
    DeploymentKind.CLOUD: _remote,
    DeploymentKind.OLLAMA: _ollama,
}


def conversation_slots(settings: Settings, upstream: Upstream) -> ConversationSlots:
    e = settings.engine
    bounds = SlotBounds(e.slot_save_max_bytes, e.slot_save_max_age_s)
    return ConversationSlots(settings.storage.slots_path, bounds, upstream, e.slot_save)


def open_standby(settings: Settings) -> Standby:
    e = settings.engine
    most = e.standby_max_bytes if e.standby_max_bytes is not None else host_memory_bytes() // 4
    return Standby(enabled=e.standby, max_bytes=most, hold_s=e.standby_s)


def process_factory(
    settings: Settings,
    upstream: Upstream,
    slots: ConversationSlots | None = None,
    standby: Standby | None = None,
) -> ProcessFactory:
    slots = slots or conversation_slots(settings, upstream)
    standby = standby or open_standby(settings)
    kind = resolve_engine_kind(settings.engine)
    engines = _Engines(settings, kind, upstream, slots, standby)

    def make(spec: ModelSpec, on_exit: ExitCallback) -> EngineProcess:
        return PROCESS_FACTORIES[spec.kind](engines, spec, on_exit)

    return make


def build_guard(
    sec: SecuritySettings,
    resolve: Callable[[str], ModelSpec],
    db: Database | None,
    *,
    audit_file: Path | None = None,
    metrics: Metrics | None = None,
    node_key: SecretStr | None = None,
) -> Guard:
    """The guard and the parts the settings choose: keys in `db`, the limit storage, the audit
    log (at `sec.audit.path`, else `audit_file`), the redactor."""
    red = sec.redaction
    audit = None
    if sec.audit.enabled:
        where = sec.audit.path or audit_file
        if where is None:
            raise ValueError("the audit log is on but has no file: pass audit_file")
        audit = AuditLog(sec.audit, where)
    return Guard(
        sec,
        resolve,
        keys=KeyStore(KeyRepository(db)) if db is not None else None,
        quota=Quota(sec.limits, Limiter(sec.limits.storage_url)),
        audit=audit,
        redactor=Redactor(red) if (red.secrets or red.emails or red.phones) else None,
        metrics=metrics,
        node_key=node_key,
    )


def fleet_resolver(registry: ModelRegistry, routes: FleetRoutes | None) -> Resolve:
    """A model name to its spec: on a gateway, the best node that serves it, else the
    gateway's own registry (key scopes and per-model limits read it)."""
    if routes is None:
        return registry.resolve

    def resolve(name: str) -> ModelSpec:
        nodes = routes.candidates(name)
        return nodes[0] if nodes else registry.resolve(name)

    return resolve


def probe_targets(registry: ModelRegistry, scheduler: Scheduler) -> list[tuple[ModelSpec, str]]:
    """The vLLM, TGI and Ollama servers to probe now: external ones (Ollama whether or not
    the model is loaded), and ours while they run."""
    specs = [spec for spec in registry.all() if spec.backend in PROBED]
    out = []
    for spec, st in zip(specs, scheduler.status(specs), strict=True):
        url = st.base_url or (spec.url if spec.kind is DeploymentKind.OLLAMA else None)
        if url:
            out.append((spec, url.rstrip("/")))
    return out


@asynccontextmanager
async def open_database(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Database]:
    """The configured database, closed on exit; `migrate=False` for checks that write nothing."""
    db = await Database.open(settings.storage.db_url, migrate=migrate)
    try:
        yield db
    finally:
        await db.close()


@asynccontextmanager
async def open_registry(settings: Settings, *, scan: bool = True) -> AsyncIterator[ModelRegistry]:
    """The model registry on the configured database; `scan` refreshes it from the model
    folder and the config first (otherwise `registry.stored()` reads what is recorded)."""
    async with open_database(settings) as db:
        registry = ModelRegistry(settings, ModelRepository(db, owner=settings.storage.node))
        if scan:
            await registry.refresh()
        yield registry


@asynccontextmanager
async def open_key_store(settings: Settings, *, migrate: bool = True) -> AsyncIterator[KeyStore]:
    """The API keys in the configured database (`mlo keys`, `mlo security-audit`)."""
    async with open_database(settings, migrate=migrate) as db:
        store = KeyStore(KeyRepository(db))
        try:
            yield store
        finally:
            await store.close()


async def stored_keys(settings: Settings) -> list[ApiKey] | None:
    """The stored keys, as `mlo security-audit` checks them: [] when there is no database yet
    (nothing is created to answer), None when it cannot be read."""
    db_file = sqlite_path(settings.storage.db_url)
    if db_file is not None and not db_file.exists():
        return []
    try:
        async with open_key_store(settings, migrate=False) as store:  # a check writes nothing
            return await store.list()
    except MloError:
        return None


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    db: Database
    registry: ModelRegistry
    scheduler: Scheduler
    upstream: Upstream
    router: Router
    inference: InferenceService
    monitor: GpuMonitor
    guard: Guard
    probes: BackendMonitor  # vLLM /metrics, TGI /info, Ollama /api/tags and /api/ps
    status: StatusService  # the views of /health, /models, /backends, /vram/status; gauges
    control: ModelControl  # load, unload, pin, pull: for every entry point
    fleet: Membership  # heartbeats of a node; the fleet's nodes for /nodes
    responses: ResponseRepository  # stored answers of /v1/responses
    stack: AsyncExitStack = field(repr=False)  # closes every part, last opened first

    @property
    def started_at(self) -> float:
        return self.status.started_at

    @classmethod
    async def start(cls, settings: Settings, factory: ProcessFactory | None = None) -> Services:
        async with AsyncExitStack() as stack:
            services = await cls._open(stack, settings, factory)
            refusal = insecure_bind(settings, services.guard.auth_on)
            if refusal is not None:
                raise ConfigError(refusal)
            services.stack = stack.pop_all()  # started: `close()` owns them now
        log.info("ml-offload ready with %d models", len(services.registry.all()))
        return services

    @classmethod
    async def _open(
        cls, stack: AsyncExitStack, settings: Settings, factory: ProcessFactory | None
    ) -> Services:
        """Open each part, registering its close on `stack` as soon as it is open."""
        settings.storage.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private
        metrics = Metrics()
        db = await stack.enter_async_context(open_database(settings))
        registry = ModelRegistry(settings, ModelRepository(db, owner=settings.storage.node))
        await registry.refresh()
        monitor = open_monitor(settings.gpu)
        stack.callback(monitor.close)
        upstream = Upstream(timeout_s=settings.server.upstream_timeout_s)
        stack.push_async_callback(upstream.close)  # closed after the scheduler stops engines
        await upstream.start()
        slots = conversation_slots(settings, upstream)
        standby = open_standby(settings)
        stack.callback(standby.close)  # after the engines stopped
        scheduler = Scheduler(
            settings.scheduler,
            factory or process_factory(settings, upstream, slots, standby),
            metrics,
            budget_bytes=memory_budget(settings),
            estimate=functools.partial(
                spec_estimate, context_overhead_bytes=settings.gpu.context_overhead_bytes
            ),
            monitor=monitor,
            reserve_bytes=settings.gpu.reserve_bytes,
        )
        stack.push_async_callback(scheduler.close)
        stack.callback(standby.stop_parking)  # engines stopped at shutdown are not held
        await scheduler.start()
        probes = BackendMonitor(
            upstream,
            lambda: probe_targets(registry, scheduler),
            on_dropped=scheduler.dropped_elsewhere,  # Ollama's /api/ps is the truth
        )
        stack.push_async_callback(probes.close)
        await probes.start()
        routes = None
        if settings.fleet.role == "gateway":
            tls = node_tls(settings.fleet)
            routes = FleetRoutes(
                NodeRepository(db),
                refresh_s=settings.fleet.refresh_s,
                node_key=settings.fleet.node_key,
                on_node=None if tls is None else lambda url: upstream.use_tls(url, tls),
            )
            stack.push_async_callback(routes.close)
            await routes.start()
        router = Router(
            registry.resolve,
            lambda spec: scheduler.state(spec),
            cooldown_s=settings.router.cooldown_s,
            load_of=deployment_load(scheduler, probes),
            fleet=routes,
        )
        guard = build_guard(
            settings.security,
            fleet_resolver(registry, routes),
            db,
            audit_file=audit_path(settings),
            metrics=metrics,
            node_key=settings.fleet.node_key if settings.fleet.role == "node" else None,
        )
        stack.push_async_callback(guard.close)
        await guard.start()
        tracer = open_tracer(settings.tracing)
        stack.push_async_callback(asyncio.to_thread, tracer.close)  # exports what is batched
        inference = InferenceService(router, scheduler, upstream, metrics, guard, tracer, slots)
        started_at = time.time()
        status = StatusService(
            settings,
            registry,
            scheduler,
            router,
            probes,
            started_at=started_at,
            fleet=routes,
            standby=standby,
        )
        metrics.watch(status.gauges)
        control = ModelControl(registry, scheduler, upstream)
        if settings.scan_models_dir and settings.watch_models_dir:
            watch = FolderWatch(control, settings.storage.models_path)
            stack.push_async_callback(watch.close)
            await watch.start()
        fleet = Membership(
            NodeRepository(db),
            name=settings.storage.node,
            role=settings.fleet.role,
            heartbeat_s=settings.fleet.heartbeat_s,
            lease_s=settings.fleet.lease_s,
            snapshot=lambda: (
                status.memory(reveal=True),
                status.models(reveal=True, specs=served_here(registry.all())),
            ),
            url=settings.advertised_url,
        )
        stack.push_async_callback(fleet.close)
        await fleet.start()
        return cls(
            settings,
            metrics,
            db,
            registry,
            scheduler,
            upstream,
            router,
            inference,
            monitor,
            guard,
            probes,
            status,
            control,
            fleet,
            ResponseRepository(db, settings.storage.responses_ttl_s),
            stack,
        )

    async def close(self) -> None:
        await self.stack.aclose()
