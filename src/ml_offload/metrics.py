"""Prometheus metrics, one registry per gateway (no globals)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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
        self.queue_depth = Gauge(
            "mlo_queue_depth", "Requests waiting for a slot", ["model"], registry=r
        )
        self.in_flight = Gauge("mlo_in_flight", "Requests being served", ["model"], registry=r)
        self.loaded = Gauge("mlo_models_loaded", "Local models loaded (ready)", registry=r)
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
        dev = ["device", "name"]
        self.gpu_total = Gauge("mlo_gpu_memory_total_bytes", "GPU memory", dev, registry=r)
        self.gpu_used = Gauge("mlo_gpu_memory_used_bytes", "GPU memory in use", dev, registry=r)
        self.gpu_free = Gauge("mlo_gpu_memory_free_bytes", "GPU memory free", dev, registry=r)
        self.gpu_util = Gauge("mlo_gpu_utilization_ratio", "GPU utilization (0-1)", dev, registry=r)
        disk = ["folder"]  # "data" (registry, logs, audit) or "models"
        self.disk_free = Gauge("mlo_disk_free_bytes", "Free space on the disk", disk, registry=r)
        self.disk_total = Gauge("mlo_disk_total_bytes", "Size of the disk", disk, registry=r)
        self.disk_low = Gauge(
            "mlo_disk_low", "1 when free space is below storage.low_disk_bytes", disk, registry=r
        )

    def observe_devices(self, devices: Sequence[DeviceLike]) -> None:
        for d in devices:
            labels = (str(d.index), d.name)
            self.gpu_total.labels(*labels).set(d.total_bytes)
            self.gpu_used.labels(*labels).set(d.used_bytes)
            self.gpu_free.labels(*labels).set(d.free_bytes)
            if d.utilization_pct is not None:
                self.gpu_util.labels(*labels).set(d.utilization_pct / 100)

    def observe_disk(self, folder: str, free_bytes: int, total_bytes: int, low: bool) -> None:
        self.disk_free.labels(folder).set(free_bytes)
        self.disk_total.labels(folder).set(total_bytes)
        self.disk_low.labels(folder).set(int(low))

    def render(self) -> bytes:
        return generate_latest(self.registry)
