"""Our own API's views: what `/health`, `/models`, `/backends` and `/vram/status` answer.

`status.py` builds them, the routes serialise them (FastAPI response models, so `/docs` shows
these schemas), and the CLI validates the same types instead of guessing keys.

Addresses (model paths, upstream URLs, the engines' loopback URLs and pids) and error text
(which may name them) are filled only for callers allowed to see them (`reveal`); others get
the same keys with null values: names and state only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ml_offload.domain import GgufInfo, ModelState


class View(BaseModel):
    """A read-only view."""

    model_config = ConfigDict(frozen=True, extra="ignore")


def _is_none(value: object) -> bool:
    return value is None


OMITTED_WHEN_NONE: Any = Field(None, exclude_if=_is_none)  # absent rather than null


# -- /health ------------------------------------------------------------------------------


class DiskView(View):
    """Free space where models and the registry live; `low` below storage.low_disk_bytes."""

    path: str | None
    free_bytes: int
    total_bytes: int
    low: bool


class ModelCounts(View):
    known: int
    loaded: int


class HealthView(View):
    status: Literal["ok"] = "ok"
    version: str
    uptime_s: float
    pid: int | None = None  # the gateway's process (`mlo server start` checks it started it)
    models: ModelCounts
    disk: DiskView


# -- /models ------------------------------------------------------------------------------


class EstimateView(View):
    """A local model's memory estimate: all of it on the GPU, or all of it in host memory."""

    layers: int
    gpu_full_bytes: int
    gpu_compute_bytes: int
    cpu_only_bytes: int


class ModelView(View):
    """One model: what it is (config, GGUF metadata, estimate) and what it is doing now."""

    id: str
    aliases: list[str]
    source: str
    path: str | None  # the GGUF file (revealed only)
    url: str | None  # the upstream server (revealed only)
    ctx_size: int
    parallel: int
    ttl_s: float
    info: GgufInfo | None
    estimate: EstimateView | None
    state: ModelState
    in_flight: int
    queued: int
    slots: int | None  # None: no limit of ours (a remote server queues on its own)
    pid: int | None  # the engine's process (revealed only)
    idle_s: float | None
    loaded_for_s: float | None
    estimate_bytes: int
    measured_bytes: int | None
    gpu_layers: int | None
    layers: int | None
    device_bytes: dict[int, int]
    host_bytes: int | None
    pinned: bool
    last_error: str | None  # may name paths or addresses (revealed only)
    load_time_s: float | None
    base_url: str | None  # the engine's loopback address (revealed only)
    standby_bytes: int | None = None  # weights held in host memory for the next load


class ModelList(View):
    object: Literal["list"] = "list"
    data: list[ModelView]


class Unloaded(View):
    unloaded: list[str]


class Rescanned(View):
    """What `POST /models/rescan` found: models added, removed or changed, and the count."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    models: int


# -- /backends ----------------------------------------------------------------------------


class LoadView(View):
    """vLLM's load as its `/metrics` reports it."""

    running: int
    waiting: int
    kv_cache_usage: float | None


class ProbeView(View):
    """What the background probe last saw (vLLM's load, TGI's model id, Ollama's memory)."""

    ok: bool
    age_s: float
    error: str | None  # names the server's address (revealed only)
    model_id: str | None
    loaded: bool | None = OMITTED_WHEN_NONE  # Ollama only
    vram_bytes: int | None = OMITTED_WHEN_NONE  # Ollama only
    load: LoadView | None


class BackendView(View):
    """One deployment: what serves it, its state and health, and the work on it."""

    model: str
    kind: str
    target: str | None  # the path, URL or engine address (revealed only)
    state: ModelState
    healthy: bool
    cooling_s: float
    failures: int
    last_error: str | None  # revealed only
    in_flight: int
    queued: int
    fallbacks: list[str]
    probe: ProbeView | None = OMITTED_WHEN_NONE  # for probed servers (vLLM, TGI, Ollama)


class BackendList(View):
    object: Literal["list"] = "list"
    data: list[BackendView]


# -- /vram/status -------------------------------------------------------------------------


class DeviceView(View):
    """A GPU (or a simulated one) and the models placed on it (name: bytes)."""

    index: int
    name: str
    uuid: str | None  # revealed only
    total_bytes: int
    used_bytes: int
    free_bytes: int
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    models: dict[str, int]


class HostView(View):
    """Host memory: the machine's, the scheduler's budget, and what loaded models take."""

    total_bytes: int
    cores: int | None
    budget_bytes: int
    used_estimate_bytes: int

    @property
    def left_bytes(self) -> int:
        return self.budget_bytes - self.used_estimate_bytes


class PlacedModelView(View):
    """Where a loaded model sits: layers on the GPUs, bytes per device and in host memory."""

    name: str
    state: ModelState
    estimate_bytes: int
    measured_bytes: int | None
    gpu_layers: int | None
    layers: int | None
    device_bytes: dict[int, int]
    host_bytes: int | None


class MemoryView(View):
    monitor: str
    reserve_bytes: int
    devices: list[DeviceView]
    cpu: HostView
    models: list[PlacedModelView]


# -- /limits ------------------------------------------------------------------------------


class LimitView(View):
    """One per-minute limit and what is left of it in the current window."""

    subject: str  # whose limit: `key <id> (<name>)`, `client <host>`, `model '<name>'`
    what: Literal["requests", "tokens"]
    limit: int  # per minute
    used: int
    remaining: int
    reset_s: float  # until the window ends
    reset: str  # the same in `x-ratelimit-reset-*` form (`12s`, `1m0s`)


class LimitsView(View):
    """The rate limits that apply to a caller (`GET /limits`), read from the live limiter."""

    subject: str | None  # whose per-key limits; None: none apply (the admin key, auth off)
    limits: list[LimitView]  # the caller's own, then every per-model limit


# -- /ui/events (the dashboard's live feed) -----------------------------------------------


class GenAiTotals(View):
    """Running totals of the GenAI metrics since start: the dashboard's sparklines are their
    differences between two snapshots (requests/s, output tokens/s, mean time to first token)."""

    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    ttft_count: int
    ttft_sum_s: float


class AuditEventView(View):
    """One recent audit event, as the dashboard lists it (admin keys only)."""

    time: str | None
    key_name: str | None
    method: str | None
    path: str | None
    model: str | None
    status: int | None
    latency_ms: float | None


# -- /nodes ---------------------------------------------------------------------------------


class NodeDeviceView(View):
    index: int
    name: str
    total_bytes: int
    free_bytes: int


class FleetNodeView(View):
    """A fleet node from its latest heartbeat; `alive` false once its lease has passed."""

    name: str
    role: str
    alive: bool
    devices: list[NodeDeviceView]
    loaded: list[str]
    host_free_bytes: int
    queue_depth: int
    started_at: float  # unix time
    beat_age_s: float  # seconds since its latest heartbeat
    lease_s: float
    url: str | None = None  # where gateways reach it
    models: list[str] = []  # the models it serves


class FleetView(View):
    object: Literal["list"] = "list"
    data: list[FleetNodeView]


# -- /ui/events: one snapshot (after the views it holds) ------------------------------------


class DashboardView(View):
    """One snapshot of the live feed: the same views as `/models` and `/vram/status`, the
    GenAI totals and, for admin keys, the latest audit events."""

    time: float
    admin: bool  # the caller may load, unload and pin (the dashboard shows the buttons)
    models: list[ModelView]
    memory: MemoryView
    totals: GenAiTotals
    audit: list[AuditEventView]
    nodes: list[FleetNodeView] = []  # admin keys, in a fleet (fleet.role node or gateway)
