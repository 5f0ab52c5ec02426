"""Prometheus metrics, one registry per gateway (no globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class DeviceLike(Protocol):
    """A GPU device as `gpu.base.GpuDevice` describes it (read-only)."""

    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def used_bytes(self) -> int: ...
    @property
    def free_bytes(self) -> int: ...
    @property
    def utilization_pct(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class ModelLoad:
    name: str
    queued: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class DiskGauge:
    folder: str  # "data" (registry, logs, audit) or "models"
    free_bytes: int
    total_bytes: int
    low: bool  # free space below storage.low_disk_bytes


@dataclass(frozen=True, slots=True)
class RuntimeGauges:
    """A snapshot of what the gauges show (built by the status service)."""

    loaded: int  # local models ready
    devices: Sequence[DeviceLike]
    models: Sequence[ModelLoad]  # models with runtime state (loaded, loading or failed)
    disks: Sequence[DiskGauge] = ()


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mlo_requests",
            "Requests by endpoint, model and status",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.errors = Counter(
            "mlo_errors", "Errors by model and error type", ["model", "type"], registry=r
        )
        self.latency = Histogram(
            "mlo_request_latency_seconds",
            "Request latency",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "mlo_time_to_first_token_seconds",
            "Time to the first streamed token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("mlo_tokens", "Tokens in and out", ["model", "direction"], registry=r)
        self.load_time = Histogram(
            "mlo_model_load_seconds",
            "Time to load a model",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.evictions = Counter(
            "mlo_evictions", "Models unloaded", ["model", "reason"], registry=r
        )
        self.refusals = Counter(
            "mlo_guard_refusals",
            "Requests the security guard refused, by status (401, 403, 429, 503) and reason",
            ["status", "reason"],
            registry=r,
        )

    def watch(self, read: Callable[[], RuntimeGauges]) -> None:
        """Report the runtime gauges (models loaded, queues, GPU memory) from `read()`, called
        at each scrape: the numbers are as fresh as the scrape, and no route sets them."""
        self.registry.register(_RuntimeCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RuntimeCollector(Collector):
    def __init__(self, read: Callable[[], RuntimeGauges]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        """The families without samples (so registering does not read the state)."""
        return _families(RuntimeGauges(0, (), (), ()), with_loaded=False)

    def collect(self) -> Iterator[Metric]:
        return _families(self._read())


def _families(g: RuntimeGauges, *, with_loaded: bool = True) -> Iterator[Metric]:
    loaded = GaugeMetricFamily("mlo_models_loaded", "Local models loaded (ready)")
    if with_loaded:
        loaded.add_metric([], g.loaded)
    yield loaded
    queue = GaugeMetricFamily("mlo_queue_depth", "Requests waiting for a slot", labels=["model"])
    busy = GaugeMetricFamily("mlo_in_flight", "Requests being served", labels=["model"])
    for m in g.models:
        queue.add_metric([m.name], m.queued)
        busy.add_metric([m.name], m.in_flight)
    yield from (queue, busy)
    dev = ["device", "name"]
    total = GaugeMetricFamily("mlo_gpu_memory_total_bytes", "GPU memory", labels=dev)
    used = GaugeMetricFamily("mlo_gpu_memory_used_bytes", "GPU memory in use", labels=dev)
    free = GaugeMetricFamily("mlo_gpu_memory_free_bytes", "GPU memory free", labels=dev)
    util = GaugeMetricFamily("mlo_gpu_utilization_ratio", "GPU utilization (0-1)", labels=dev)
    for d in g.devices:
        labels = [str(d.index), d.name]
        total.add_metric(labels, d.total_bytes)
        used.add_metric(labels, d.used_bytes)
        free.add_metric(labels, d.free_bytes)
        if d.utilization_pct is not None:
            util.add_metric(labels, d.utilization_pct / 100)
    yield from (total, used, free, util)
    yield from _disk_families(g.disks)


def _disk_families(disks: Sequence[DiskGauge]) -> Iterator[Metric]:
    free = GaugeMetricFamily("mlo_disk_free_bytes", "Free space on the disk", labels=["folder"])
    total = GaugeMetricFamily("mlo_disk_total_bytes", "Size of the disk", labels=["folder"])
    low = GaugeMetricFamily(
        "mlo_disk_low", "1 when free space is below storage.low_disk_bytes", labels=["folder"]
    )
    for d in disks:
        free.add_metric([d.folder], d.free_bytes)
        total.add_metric([d.folder], d.total_bytes)
        low.add_metric([d.folder], int(d.low))
    yield from (free, total, low)
