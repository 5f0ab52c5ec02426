"""Plain types shared by every layer."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr


class ModelState(enum.StrEnum):
    """Life of a local model process: stopped → starting → ready → stopping, plus failed;
    `unavailable`: it cannot be served as configured (file missing, no key), in views only."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"


class DeploymentKind(enum.StrEnum):
    """What a deployment is, set once by the registry and read everywhere else (the process
    factory table in `services.py`, the scheduler, keys, redaction, status views)."""

    LLAMACPP = "llamacpp"  # a local GGUF file run by our llama.cpp engine
    MANAGED = "managed"  # a server command we start and stop (`vllm serve ...`)
    REMOTE = "remote"  # a server that runs elsewhere (OpenAI-compatible, vLLM, TGI)
    OLLAMA = "ollama"  # a model held by an external Ollama, which we load and unload
    CLOUD = "cloud"  # a cloud provider (OpenAI, DeepSeek, Anthropic) on its default URL

    @property
    def runs_here(self) -> bool:
        """A process we start, whose memory we place: our engine or a managed command."""
        return self in (DeploymentKind.LLAMACPP, DeploymentKind.MANAGED)

    @property
    def holds_memory(self) -> bool:
        """Loaded and unloaded by us: our processes, and models in an external Ollama."""
        return self.runs_here or self is DeploymentKind.OLLAMA


FLEET_SOURCE = "fleet"  # `ModelSpec.source` of a model a gateway reaches on a fleet node
SESSION_HEADER = "x-session-id"  # a conversation's id: a fleet gateway keeps it on one node


def is_name_pattern(name: str) -> bool:
    """Whether a model alias is a glob pattern (`claude-*`, `gpt-4?`), matched by fnmatch."""
    return any(c in name for c in "*?[")


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback addresses; a wildcard or any other name is not."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def leaves_machine(url: str | None) -> bool:
    """The redaction rule, for every way a deployment's address is given (config `url`, a
    provider's default URL, `LLAMACPP_URL`): prompts sent to `url` leave this machine unless
    its host is `localhost` or a loopback address (any other name is assumed to be elsewhere)."""
    return url is not None and not is_loopback_host(urlsplit(url).hostname or "")


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
    # CPU weight repacking, for each of gguf.REPACK_FAMILIES in turn: the bytes of each block's
    # repacked copies, the output head's, then the file bytes the mapped buffer stops spanning
    # (read them with gguf.repack_bytes); () when no family repacks anything
    repack_bytes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One servable model (a deployment): what it is (`kind`), where it is (`path` or `url`,
    or `command` for a server we start) and how it is run and spoken to."""

    name: str
    kind: DeploymentKind = DeploymentKind.LLAMACPP
    path: Path | None = None
    url: str | None = None
    aliases: tuple[str, ...] = ()
    ctx_size: int = 4096
    parallel: int = 8  # the engine's slots (ours); see `concurrency` for what we send at once
    max_gpu_layers: int | None = None  # the configured cap; None: as many as fit
    max_concurrency: int | None = None  # requests sent at once; None: see `concurrency`
    ttl_s: float = 300.0
    extra_args: tuple[str, ...] = ()
    chat_template_file: Path | None = None  # a Jinja template run instead of the GGUF's own
    pinned: bool = False
    embeddings: bool = True
    info: GgufInfo | None = None
    source: str = "config"  # "config", "scan", "demo", "env", or FLEET_SOURCE
    # the upstream's protocol: "openai" (OpenAI-compatible: llama.cpp, OpenAI), "ollama",
    # "vllm", "tgi", "deepseek" or "anthropic"
    backend: str = "openai"
    remote_model: str | None = None  # the model's name on that server, when it differs
    fallbacks: tuple[str, ...] = ()  # models that answer instead when this one fails
    redact: bool = False  # mask secrets in prompts before they leave (see `leaves_machine`)
    # the upstream's key; never shown (not in repr, /models or /backends)
    api_key: SecretStr | None = field(default=None, repr=False, compare=False)
    command: tuple[str, ...] = ()  # a server we start (`vllm serve ...`); host/port added

    @property
    def provider_name(self) -> str:
        """`gen_ai.provider.name` in metrics and traces: our llama.cpp engine, else the
        upstream's protocol ("openai", "ollama", "vllm", "tgi", "deepseek", "anthropic")."""
        return "llama.cpp" if self.kind is DeploymentKind.LLAMACPP else self.backend

    @property
    def on_fleet_node(self) -> bool:
        """A model a fleet node runs, reached by a gateway (fleet/routing.py): our own engine,
        on another host."""
        return self.source == FLEET_SOURCE

    @property
    def is_local(self) -> bool:
        """A process we run here (see `DeploymentKind.runs_here`)."""
        return self.kind.runs_here

    @property
    def holds_memory(self) -> bool:
        return self.kind.holds_memory

    @property
    def upstream_model(self) -> str:
        """The model's name on the server that answers for it."""
        return self.remote_model or self.name

    @property
    def concurrency(self) -> int | None:
        """Requests sent at once: the configured cap, else our engine's slots; None: no cap
        (a remote server or cloud provider queues or refuses on its own)."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        return self.parallel if self.kind.runs_here else None

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
    slots: int | None = 0  # None: no limit of ours (a remote server queues on its own)
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


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key (never the secret itself: only its hash is kept)."""

    id: str
    name: str
    models: tuple[str, ...] = ()  # model names, aliases or `provider:*`; empty: every model
    admin: bool = False
    rpm: int | None = None  # requests per minute; None: no limit of its own
    tpm: int | None = None  # tokens per minute
    expires_at: float | None = None  # unix time
    revoked_at: float | None = None
    cert_subject: str | None = None  # when set, only a client certificate with this subject
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Window:
    """One rate limit's state after a charge, for the `x-ratelimit-*` headers."""

    limit: int
    used: int
    reset_s: float

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class Charge:
    """What a rate limit took, so that it can be settled (refunded or topped up) later."""

    key: str
    window: int
    amount: int


@dataclass(slots=True)
class RequestContext:
    """What the security layer learns about one request as it goes: who asked (auth), what for
    (model, reserved tokens), who answered (backend, usage, redactions). Audited at the end."""

    request_id: str
    method: str
    path: str
    client: str | None = None
    cert_subject: str | None = None
    key: ApiKey | None = None  # None: auth is off, or the admin key from the environment
    admin: bool = False
    model: str | None = None
    backend: str | None = None  # the deployment that answered
    reserved_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0  # of the prompt tokens, those read from the prompt cache
    cache_write_tokens: int = 0  # written to it (Anthropic's cache_creation_input_tokens)
    redactions: int = 0
    prompt: object = None  # text or messages, as sent: hashed (and dropped) by the audit writer
    status: int = 0
    started: float = 0.0  # time.perf_counter() at arrival
    time: float = 0.0  # unix time at arrival
    settled: bool = False
    public: bool = False  # a path that needs no key (`security.public_paths`): not audited
    error: str | None = None  # the refusal's error code, for the audit event
    rpm_due: bool = False  # a message on a long connection: its request is charged at admit
    session: str | None = None  # the `x-session-id` header: keeps a conversation on one node
    windows: dict[str, Window] = field(default_factory=dict)  # limits seen, for the headers
    charges: list[Charge] = field(default_factory=list)  # tokens reserved, settled at the end

    def record_usage(self, usage: object) -> None:
        """Take OpenAI-shaped usage (the last report wins: streams report it once, at the end)."""
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                self.cache_read_tokens = int(details.get("cached_tokens") or 0)


@dataclass(frozen=True, slots=True)
class NodeDevice:
    """One GPU of a node, as its heartbeat reports it."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A model a node can serve (its registry), as its heartbeat reports it."""

    name: str
    aliases: tuple[str, ...] = ()
    estimate_bytes: int = 0  # what loading it takes there (0: unknown, or not ours to load)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True, slots=True)
class NodeBeat:
    """A node's heartbeat: what it holds, and the lease that says how long to believe it."""

    name: str
    role: str
    devices: tuple[NodeDevice, ...]
    loaded: tuple[str, ...]  # models ready or starting there
    host_free_bytes: int
    queue_depth: int  # requests in flight or queued over all its models
    started_at: float  # unix time
    beat_at: float  # unix time of this heartbeat
    lease_s: float  # gone once `beat_at + lease_s` has passed
    url: str | None = None  # where gateways reach it (`fleet.advertise_url`)
    served: tuple[ServedModel, ...] = ()  # the models it can serve

    def alive(self, now: float) -> bool:
        return now < self.beat_at + self.lease_s

    def serving(self, model: str) -> ServedModel | None:
        """The model this node serves under the name or alias `model`, if any."""
        return next((m for m in self.served if model in m.names), None)
