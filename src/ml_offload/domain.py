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
    # What the memory estimate (vram.py) needs; defaults keep older callers and rows working.
    layer_weight_bytes: tuple[int, ...] = ()  # tensors `blk.N.*`, by N (experts included)
    input_weight_bytes: int = 0  # `token_embd*`: kept in host memory by llama.cpp
    output_weight_bytes: int = 0  # `output*` and any tensor outside the layers
    output_tied: bool = False  # no `output.weight`: the head is a copy of `token_embd`
    vocab_size: int | None = None
    feed_forward_length: int | None = None  # the largest, when it varies by layer
    key_length: int | None = None  # per head; None: embedding_length / head_count
    value_length: int | None = None
    head_count_kv_per_layer: tuple[int, ...] = ()  # when the metadata gives an array
    sliding_window: int | None = None
    swa_layers: tuple[bool, ...] = ()  # True for layers that attend within the window
    expert_count: int | None = None
    expert_used_count: int | None = None
    expert_feed_forward_length: int | None = None


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
    backend: str = "openai"  # for `url` models: "openai" (OpenAI-compatible) or "ollama"
    remote_model: str | None = None  # the model's name on that server, when it differs
    fallbacks: tuple[str, ...] = ()  # models that answer instead when this one fails

    @property
    def is_local(self) -> bool:
        return self.url is None

    @property
    def holds_memory(self) -> bool:
        """Loaded and unloaded by us: a local engine, or a model in an external Ollama."""
        return self.url is None or self.backend == "ollama"

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
