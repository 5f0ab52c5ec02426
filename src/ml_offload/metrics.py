"""Prometheus metrics, one registry per gateway (no globals).

Requests are measured with the OpenTelemetry GenAI semantic conventions' instruments, named as
OpenTelemetry's Prometheus exporter names them (`gen_ai.client.token.usage` becomes
`gen_ai_client_token_usage`, attributes become labels with `_` for `.`); the gateway's own
counters and gauges (`mlo_*`) keep their names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample


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


_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
# The explicit bucket boundaries the GenAI semantic conventions advise for each instrument.
_DURATION_BUCKETS = tuple(0.01 * 2**i for i in range(14))  # 0.01, 0.02 ... 81.92
_TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16 ... 67108864
_TTFT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5)
_TTFT_BUCKETS += (0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

# gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model, gen_ai.response.model,
# error.type ("" on success: Prometheus reads an empty label as absent)
GENAI_LABELS = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "error_type",
]
# gen_ai.operation.name's well-known values for what the gateway serves
OPERATION_NAMES = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}


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
        self.load_time = Histogram(
            "mlo_model_load_seconds",
            "Time to load a model",
            ["model"],
            buckets=_LOAD_BUCKETS,
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

        self.genai = GenAiInstruments(r)

    def watch(self, read: Callable[[], RuntimeGauges]) -> None:
        """Report the runtime gauges (models loaded, queues, GPU memory) from `read()`, called
        at each scrape: the numbers are as fresh as the scrape, and no route sets them."""
        self.registry.register(_RuntimeCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class GenAiInstruments:
    """The GenAI semantic conventions' histograms. The gateway is a GenAI server to its callers
    (`gen_ai.server.*`: the whole request, queue and model load included) and a GenAI client
    of its upstreams (`gen_ai.client.*`: from the upstream call to its last byte)."""

    def __init__(self, r: CollectorRegistry) -> None:
        def histogram(
            name: str, doc: str, buckets: Sequence[float], labels: list[str]
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        self.operation = histogram(
            "gen_ai_client_operation_duration_seconds",
            "gen_ai.client.operation.duration: the upstream call, from request to last byte",
            _DURATION_BUCKETS,
            GENAI_LABELS,
        )
        self.tokens = histogram(
            "gen_ai_client_token_usage",
            "gen_ai.client.token.usage: tokens per request, by gen_ai.token.type",
            _TOKEN_BUCKETS,
            [*GENAI_LABELS[:4], "gen_ai_token_type"],
        )
        self.request = histogram(
            "gen_ai_server_request_duration_seconds",
            "gen_ai.server.request.duration: the whole request (queue and model load included)",
            _DURATION_BUCKETS,
            GENAI_LABELS,
        )
        self.ttft = histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai.server.time_to_first_token: request arrival to the first streamed token",
            _TTFT_BUCKETS,
            GENAI_LABELS[:4],
        )
        self.tpot = histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "gen_ai.server.time_per_output_token: after the first token, per output token",
            _TPOT_BUCKETS,
            GENAI_LABELS[:4],
        )
        self._series: dict[tuple[str, str, str, str], _Series] = {}

    def totals(self) -> dict[str, float]:
        """Sums over every label set since start: requests, errors, input/output tokens and
        the time-to-first-token histogram's count and sum."""
        out = dict.fromkeys(
            ("requests", "errors", "input_tokens", "output_tokens", "ttft_count", "ttft_sum_s"), 0.0
        )
        for s in _samples(self.request, "_count"):
            out["requests"] += s.value
            out["errors"] += s.value if s.labels.get("error_type") else 0
        for s in _samples(self.tokens, "_sum"):
            out[f"{s.labels['gen_ai_token_type']}_tokens"] += s.value
        out["ttft_count"] = sum(s.value for s in _samples(self.ttft, "_count"))
        out["ttft_sum_s"] = sum(s.value for s in _samples(self.ttft, "_sum"))
        return out

    def call(
        self, operation: str, provider: str, request_model: str, response_model: str
    ) -> GenAiCall:
        labels = (
            OPERATION_NAMES.get(operation, operation),
            provider,
            request_model,
            response_model,
        )
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(self, labels)
        return GenAiCall(series, time.perf_counter())


class _Series:
    """One label set's children, looked up once (a `labels()` call takes a lock and builds a
    key; a request records up to six observations)."""

    __slots__ = ("labels", "operation", "request", "to", "tokens_in", "tokens_out", "tpot", "ttft")

    def __init__(self, to: GenAiInstruments, labels: tuple[str, str, str, str]) -> None:
        self.to, self.labels = to, labels
        self.request = to.request.labels(*labels, "")
        self.operation = to.operation.labels(*labels, "")
        self.tokens_in = to.tokens.labels(*labels, "input")
        self.tokens_out = to.tokens.labels(*labels, "output")
        self.ttft = to.ttft.labels(*labels)
        self.tpot = to.tpot.labels(*labels)


def _samples(histogram: Histogram, suffix: str) -> Iterator[Sample]:
    name = histogram._name + suffix  # prometheus_client keeps the family's name there
    return (s for family in histogram.collect() for s in family.samples if s.name == name)


class GenAiCall:
    """One request's measurements, recorded once at `finish` (a handful of observations)."""

    __slots__ = ("_first", "_in", "_out", "_sent", "_series", "_started")

    def __init__(self, series: _Series, started: float) -> None:
        self._series, self._started = series, started
        self._sent: float | None = None
        self._first: float | None = None
        self._in: int | None = None
        self._out = 0

    def sent(self) -> None:
        """The upstream call starts now (a slot is held, the model is loaded)."""
        self._sent = time.perf_counter()

    def first_token(self) -> None:
        if self._first is None:
            self._first = time.perf_counter()
            self._series.ttft.observe(self._first - self._started)

    def usage(self, usage: object) -> None:
        """OpenAI-shaped usage (the last report wins; observed once, at `finish`)."""
        if isinstance(usage, dict):
            self._in = int(usage.get("prompt_tokens") or 0)
            self._out = int(usage.get("completion_tokens") or 0)

    def finish(self, error_type: str = "") -> None:
        now, s = time.perf_counter(), self._series
        request, operation = s.request, s.operation
        if error_type:
            request = s.to.request.labels(*s.labels, error_type)
            operation = s.to.operation.labels(*s.labels, error_type)
        request.observe(now - self._started)
        if self._sent is not None:
            operation.observe(now - self._sent)
        if self._in is not None:
            s.tokens_in.observe(self._in)
            s.tokens_out.observe(self._out)
        if self._first is not None and self._out > 1 and not error_type:
            s.tpot.observe((now - self._first) / (self._out - 1))


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
