"""Plain types shared by every layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class ModelState(enum.StrEnum):
    """Life of a local model process: stopped → starting → ready → stopping, plus failed."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class GgufInfo:
    """What the GGUF header says about a model (the parts we schedule and display by)."""

    architecture: str
    name: str | None
    parameters: int | None
    quantization: str | None
    context_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    embedding_length: int | None
    file_size_bytes: int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One servable model: a local GGUF file run by the engine, or an external server (`url`)."""

    name: str
    path: Path | None = None
    url: str | None = None
    aliases: tuple[str, ...] = ()
    ctx_size: int = 4096
    parallel: int = 8
    gpu_layers: int = -1
    ttl_s: float = 300.0
    extra_args: tuple[str, ...] = ()
    pinned: bool = False
    embeddings: bool = True
    info: GgufInfo | None = None
    source: str = "config"  # "config", "scan", "demo", "env"

    @property
    def is_local(self) -> bool:
        return self.url is None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(slots=True)
class ModelStatus:
    """A snapshot of one model's runtime state, for /models, `mlo ps` and metrics."""

    name: str
    state: ModelState
    in_flight: int = 0
    queued: int = 0
    slots: int = 0
    pid: int | None = None
    base_url: str | None = None
    idle_s: float | None = None
    loaded_for_s: float | None = None
    estimate_bytes: int = 0
    measured_bytes: int | None = None
    gpu_layers: int | None = None
    layers: int | None = None
    device_bytes: dict[int, int] = field(default_factory=dict)
    host_bytes: int | None = None
    pinned: bool = False
    last_error: str | None = None
    load_time_s: float | None = None
