"""Settings: a TOML file plus environment variables, validated once at start.

Precedence (highest first): explicit overrides, `MLO_*` variables (nested with `__`, e.g.
`MLO_SERVER__PORT`), the variables users of the original scripts know (`LLAMACPP_URL`,
`LLM_PARALLEL`, `TF_MODELS`, `HF_TOKEN`), the TOML file, defaults.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ml_offload.errors import ConfigError
from ml_offload.profiles import PROFILES, ProfileName, laid_under

CONFIG_ENV = "MLO_CONFIG"


def xdg_dir(kind: Literal["data", "config", "state"]) -> Path:
    """The XDG base folder for ml-offload (`~/.local/share/ml-offload` and friends)."""
    var, default = {
        "data": ("XDG_DATA_HOME", ".local/share"),
        "config": ("XDG_CONFIG_HOME", ".config"),
        "state": ("XDG_STATE_HOME", ".local/state"),
    }[kind]
    base = os.environ.get(var) or str(Path.home() / default)
    return Path(base) / "ml-offload"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    upstream_timeout_s: float = Field(600.0, gt=0)
    header_timeout_s: float = Field(
        10.0, gt=0, description="close a connection whose request headers take longer (408)"
    )
    docs: bool = Field(
        False, description="serve Swagger UI at /docs (its scripts come from a CDN: online only)"
    )


class StorageSettings(_Section):
    data_dir: Path = Field(default_factory=lambda: xdg_dir("data"))
    models_dir: Path | None = None
    database_url: str | None = None
    low_disk_bytes: int = Field(
        5 * 1024**3, ge=0, description="warn in /health and the log below this free space (0: off)"
    )
    responses_ttl_s: float = Field(
        30 * 86400,
        gt=0,
        description="how long answers of POST /v1/responses (store: true) are kept for "
        "previous_response_id and GET /v1/responses/{id}",
    )
    node_name: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="owner of this gateway's rows in a shared registry; default: the host name",
    )

    @property
    def node(self) -> str:
        """Who owns the registry rows this gateway writes (and alone may delete)."""
        return self.node_name or socket.gethostname()

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def logs_path(self) -> Path:
        return self.data_dir / "logs"

    @property
    def slots_path(self) -> Path:
        """Where llama.cpp engines save conversations' slots (a folder per model)."""
        return self.data_dir / "slots"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'registry.db'}"


FleetRole = Literal["all", "node", "gateway"]


class FleetSettings(_Section):
    role: FleetRole = Field(
        "all",
        description="all: one machine (today's gateway); node: also publishes its devices and "
        "models as heartbeats in the shared database; gateway: holds no engines",
    )
    heartbeat_s: float = Field(2.0, gt=0, description="how often a node publishes its state")
    lease_s: float = Field(
        10.0, gt=0, description="a node not heard from for this long is shown gone"
    )
    advertise_url: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+/?$",
        description="where gateways reach this node (http[s]://host:port); default: from "
        "server.host, server.port and security.tls (the host name for a wildcard bind)",
    )
    node_key: SecretStr | None = Field(
        None,
        description="the secret gateways send to nodes as their bearer key; a node takes it "
        "as a key for inference (never for admin paths)",
    )
    refresh_s: float = Field(
        1.0, gt=0, description="how often a gateway re-reads the fleet's nodes for routing"
    )
    tls_ca_file: Path | None = Field(
        None, description="a gateway trusts nodes' certificates from this CA (PEM)"
    )
    tls_cert_file: Path | None = Field(
        None, description="mutual TLS: the certificate a gateway presents to nodes (PEM)"
    )
    tls_key_file: Path | None = Field(None, description="its private key (PEM)")

    @model_validator(mode="after")
    def _lease_outlives_beats(self) -> FleetSettings:
        if self.lease_s <= self.heartbeat_s:
            raise ValueError("fleet.lease_s must be longer than fleet.heartbeat_s")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> FleetSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both fleet.tls_cert_file and fleet.tls_key_file, or neither")
        return self


class SchedulerSettings(_Section):
    max_loaded_models: int = Field(4, ge=1)
    memory_budget_bytes: int = Field(0, ge=0, description="0: 80% of host memory")
    default_ttl_s: float = Field(300.0, ge=0, description="0: never unload when idle")
    queue_size: int = Field(64, ge=0, description="requests waiting per model beyond its slots")
    queue_timeout_s: float = Field(120.0, gt=0)
    load_timeout_s: float = Field(120.0, gt=0)
    reap_interval_s: float = Field(1.0, gt=0)


class EngineSettings(_Section):
    kind: Literal["auto", "xllamacpp", "llama-server"] = "auto"
    llama_server_bin: str | None = None
    threads: int = Field(0, ge=0, description="0: the engine's default")
    default_ctx_size: int = Field(4096, ge=64)
    default_parallel: int = Field(8, ge=1)
    flash_attn: Literal["auto", "on", "off"] = "auto"
    extra_args: list[str] = Field(default_factory=list)
    slot_save: bool = Field(
        True,
        description="keep conversations' KV cache across a model swap: llama.cpp's slot save "
        "before an unload, restored when the conversation returns (<data_dir>/slots)",
    )
    slot_save_max_bytes: int = Field(
        4 * 1024**3, ge=0, description="saved slots kept on disk, in all; oldest removed first"
    )
    slot_save_max_age_s: float = Field(
        86400.0, gt=0, description="a saved slot older than this is removed, never restored"
    )
    standby: bool = Field(
        True,
        description="keep a stopped model's weights in host memory (mapped and locked) for its "
        "next load, while memory allows (backends/standby.py)",
    )
    standby_max_bytes: int | None = Field(
        None, ge=0, description="most host memory the standby holds; default a quarter of it"
    )
    standby_s: float = Field(1800.0, ge=0, description="how long stopped weights are held")


class SimulatedDevice(_Section):
    name: str = "Simulated GPU"
    total_bytes: int = Field(gt=0)


class GpuSettings(_Section):
    """`auto`: NVML when it works, else the simulated devices if any are set, else CPU only."""

    monitor: Literal["auto", "nvml", "simulated", "none"] = "auto"
    simulated_devices: list[SimulatedDevice] = Field(default_factory=list)
    reserve_bytes: int = Field(512 * 2**20, ge=0, description="kept free on every device")
    context_overhead_bytes: int = Field(
        512 * 2**20,
        ge=0,
        description="what an engine process holds on each GPU it uses beside its buffers "
        "(the CUDA context); counted on GPUs only",
    )


class RouterSettings(_Section):
    cooldown_s: float = Field(30.0, ge=0, description="how long a failed deployment is skipped")


class LimitSettings(_Section):
    """Rate limits (the `limits` package). `memory://` is per gateway; `redis://host:port` (or
    `rediss://`) is shared by every gateway that points at it."""

    storage_url: str = "memory://"
    on_storage_error: Literal["closed", "open"] = Field(
        "closed",
        description="when the storage cannot be reached: `closed` refuses limited callers "
        "(503), `open` lets them through unlimited (logged once per outage)",
    )
    default_rpm: int | None = Field(None, ge=1, description="for keys without their own rpm")
    default_tpm: int | None = Field(None, ge=1, description="for keys without their own tpm")
    default_max_tokens: int = Field(
        1024, ge=1, description="tokens reserved for a request that gives no max_tokens"
    )
    model_rpm: dict[str, int] = Field(default_factory=dict, description="per model, all keys")
    model_tpm: dict[str, int] = Field(default_factory=dict, description="per model, all keys")


class AuditSettings(_Section):
    enabled: bool = True
    path: Path | None = Field(None, description="default: <data_dir>/audit/audit.jsonl")
    log_prompts: bool = Field(False, description="store prompt text, not only its hash")
    flush_interval_s: float = Field(0.2, gt=0)
    batch_size: int = Field(256, ge=1)
    fsync: bool = True
    sync_interval_s: float = Field(
        1.0, gt=0, description="fsync and head file at most this often (and at close)"
    )
    sign: bool = Field(True, description="append Ed25519-signed checkpoints to the chain")
    signing_key_file: Path | None = Field(
        None, description="private key, created 0600; default: <log folder>-keys/<log name>.key"
    )
    checkpoint_every: int = Field(1000, ge=1, description="entries between signed checkpoints")
    rotate_bytes: int | None = Field(
        None, ge=4096, description="start a new file when the log would grow past this"
    )
    rotate_daily: bool = Field(False, description="start a new file on each new UTC day")


class TlsSettings(_Section):
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = Field(
        None, description="mutual TLS: refuse clients without a certificate from this CA"
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both 'cert_file' and 'key_file', or neither")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("'client_ca_file' (mutual TLS) needs 'cert_file' and 'key_file'")
        return self


class RedactionSettings(_Section):
    """What is masked in prompts before they leave the machine (cloud providers only)."""

    secrets: bool = True
    emails: bool = False
    phones: bool = False


class SecuritySettings(_Section):
    """`auth = "auto"`: on as soon as a key exists or an admin key is set; `required`: always on
    (no key yet means nobody gets in but the admin key); `off`: never (loopback only)."""

    auth: Literal["auto", "required", "off"] = "auto"
    admin_key: SecretStr | None = Field(None, description="also read from MLO_ADMIN_KEY")
    allow_insecure_bind: bool = Field(
        False, description="let a gateway bound to a non-loopback address run without auth"
    )
    public_paths: list[str] = Field(
        default_factory=lambda: ["/health"], description="paths that need no key"
    )
    cors_origins: list[str] = Field(default_factory=list, description="empty: no CORS")
    limits: LimitSettings = Field(default_factory=lambda: LimitSettings())
    audit: AuditSettings = Field(default_factory=lambda: AuditSettings())
    tls: TlsSettings = Field(default_factory=lambda: TlsSettings())
    redaction: RedactionSettings = Field(default_factory=lambda: RedactionSettings())


class Workspace(_Section):
    """A folder `build_and_test` may run in, and the only commands it may run there."""

    path: Path
    commands: dict[str, list[str]] = Field(
        description='name → argv, e.g. test = ["pytest", "-q"]; never a client\'s command'
    )


class McpSettings(_Section):
    knowledge_db_path: Path | None = Field(
        None, description="a separate SQLite file for notes and sessions (default: the registry)"
    )
    workspaces: dict[str, Workspace] = Field(default_factory=dict)
    build_timeout_s: float = Field(600.0, gt=0)
    build_output_bytes: int = Field(16_384, ge=256, description="the output tail returned")


class ServeProfile(_Section):
    """A server ml-offload starts and stops itself (`vllm serve <model> ...`), like its engines."""

    model: str = Field(min_length=1, description="a Hugging Face id or a local folder")
    command: list[str] = Field(default_factory=lambda: ["vllm"], min_length=1)
    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs per node")
    pipeline_parallel_size: int | None = Field(
        None, ge=1, description="nodes the model spans (vLLM's pipeline stages; needs ray_address)"
    )
    ray_address: str | None = Field(
        None,
        description="the Ray cluster the nodes joined (`ray start --head` here, `ray start "
        "--address=HEAD:6379` on the others): vLLM serves across it as one deployment",
    )
    quantization: str | None = Field(None, description="e.g. fp8, awq, gptq")
    max_model_len: int | None = Field(None, ge=64)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    extra_args: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _stages_need_a_cluster(self) -> ServeProfile:
        if (self.pipeline_parallel_size or 1) > 1 and not self.ray_address:
            raise ValueError(
                "serve.pipeline_parallel_size > 1 spans nodes: set serve.ray_address to the Ray "
                "cluster they joined (vLLM's multi-node serving runs on Ray)"
            )
        return self


class VllmSettings(_Section):
    """Defaults for every model's `serve` (vLLM started by ml-offload); its own values win."""

    tensor_parallel_size: int | None = Field(None, ge=1)
    quantization: str | None = None
    max_model_len: int | None = Field(None, ge=64)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)


class ModelConfig(_Section):
    """A model declared in config: a local GGUF `path`, an external server `url`, a server we
    start (`serve`, vLLM), or a cloud provider (`url` optional: each has a default)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
    path: Path | None = None
    url: str | None = None
    backend: Literal["openai", "ollama", "vllm", "tgi", "deepseek", "anthropic"] = Field(
        "openai",
        description="what serves `url`: an OpenAI-compatible server (llama.cpp, OpenAI), "
        "Ollama, vLLM, text-generation-inference, DeepSeek or Anthropic",
    )
    api_key: SecretStr | None = Field(None, description="sent to `url`; prefer api_key_env")
    api_key_env: str | None = Field(
        None, description="environment variable holding the key (default per cloud provider)"
    )
    serve: ServeProfile | None = Field(None, description="start `vllm serve` for this model")
    remote_model: str | None = Field(None, description="the model's name at `url`")
    aliases: list[str] = Field(default_factory=list)
    fallbacks: list[str] = Field(
        default_factory=list, description="models to answer instead when this one fails"
    )
    redact: bool | None = Field(
        None, description="mask secrets before prompts go to `url`; default: on unless loopback"
    )
    ctx_size: int | None = Field(None, ge=64)
    parallel: int | None = Field(None, ge=1)
    max_gpu_layers: int = Field(
        -1,
        ge=-1,
        validation_alias=AliasChoices("max_gpu_layers", "gpu_layers"),
        description="most layers to offload to GPUs (-1: as many as fit); old name gpu_layers",
    )
    max_concurrency: int | None = Field(
        None,
        ge=1,
        description="requests sent at once; default: the engine's slots (`parallel`) for models "
        "run here, no limit for remote servers and cloud providers",
    )
    ttl_s: float | None = Field(None, ge=0)
    extra_args: list[str] = Field(default_factory=list)
    chat_template_file: Path | None = Field(
        None,
        description="a Jinja chat template llama.cpp runs instead of the GGUF's own "
        "(--chat-template-file); `chatml-tools` names the one shipped for ChatML models "
        "(SmolLM2, Qwen) with Hermes-style tool calls",
    )
    pinned: bool = False
    embeddings: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        sources = (self.path is not None) + (self.url is not None) + (self.serve is not None)
        if self.serve is not None and self.backend != "vllm":
            raise ValueError("'serve' starts vLLM: set backend = \"vllm\" with it")
        if sources == 0 and self._has_default_url():
            return self
        if sources != 1:
            raise ValueError(
                "set exactly one of 'path' (a GGUF file), 'url' (a running server) or 'serve' "
                "(vLLM started by ml-offload); 'url' may be left out for deepseek, anthropic, "
                "and openai with an api key"
            )
        return self

    def _has_default_url(self) -> bool:
        """Cloud providers have a known URL (OpenAI's only when a key says it is meant)."""
        if self.backend in ("deepseek", "anthropic"):
            return True
        return self.backend == "openai" and (self.api_key or self.api_key_env) is not None


class TracingSettings(_Section):
    """OTLP traces (the `otel` extra): one span per request, with its steps as children."""

    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (default: the standard "
        "OTEL_EXPORTER_OTLP_ENDPOINT; neither: tracing off)",
    )
    service_name: str = Field("ml-offload", min_length=1, description="service.name of spans")
    sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="share of requests traced (1: all, 0.1: one in ten)"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLO_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    server: ServerSettings = Field(default_factory=lambda: ServerSettings())
    storage: StorageSettings = Field(default_factory=lambda: StorageSettings())
    scheduler: SchedulerSettings = Field(default_factory=lambda: SchedulerSettings())
    fleet: FleetSettings = Field(default_factory=lambda: FleetSettings())
    engine: EngineSettings = Field(default_factory=lambda: EngineSettings())
    gpu: GpuSettings = Field(default_factory=lambda: GpuSettings())
    router: RouterSettings = Field(default_factory=lambda: RouterSettings())
    security: SecuritySettings = Field(default_factory=lambda: SecuritySettings())
    profile: ProfileName | None = Field(None, description="hardware profile (profiles.PROFILES)")
    vllm: VllmSettings = Field(default_factory=lambda: VllmSettings())
    mcp: McpSettings = Field(default_factory=lambda: McpSettings())
    tracing: TracingSettings = Field(default_factory=lambda: TracingSettings())
    models: list[ModelConfig] = Field(default_factory=list)
    demo_model: bool = Field(True, description="register the bundled SmolLM2 when installed")
    scan_models_dir: bool = True
    watch_models_dir: bool = Field(True, description="rescan when the model folder changes")
    llamacpp_url: str | None = None
    hf_token: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _profile(cls, data: Any) -> Any:
        name = data.get("profile") if isinstance(data, dict) else None
        if name is None or name not in PROFILES:
            return data  # an unknown name is reported by the field's own validation
        return laid_under(PROFILES[name], data)

    @model_validator(mode="after")
    def _vllm_defaults(self) -> Settings:
        for m in self.models:
            if m.serve is not None:
                for key, value in self.vllm.model_dump(exclude_none=True).items():
                    if getattr(m.serve, key) is None:
                        setattr(m.serve, key, value)
        return self

    @property
    def advertised_url(self) -> str:
        """Where gateways reach this node: `fleet.advertise_url`, else this server's own
        address (the host name in place of a wildcard bind)."""
        if self.fleet.advertise_url:
            return self.fleet.advertise_url.rstrip("/")
        scheme = "https" if self.security.tls.cert_file is not None else "http"
        host = self.server.host
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = socket.getfqdn()
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.server.port}"

    @model_validator(mode="after")
    def _gateway_holds_no_engines(self) -> Settings:
        if self.fleet.role != "gateway":
            return self
        for m in self.models:
            if m.path is not None or m.serve is not None:
                raise ValueError(
                    f"fleet.role = 'gateway' holds no engines but model {m.name!r} runs here; "
                    "serve it from a node (mlo serve --role node) or give it a url"
                )
        self.scan_models_dir = self.demo_model = False  # nothing found here runs here
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for m in self.models:
            for n in (m.name, *m.aliases):
                if n in seen:
                    raise ValueError(f"model name or alias {n!r} is declared twice")
                seen.add(n)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls)
        return (init_settings, env_settings, _LegacyEnvSource(settings_cls), toml)


class _LegacyEnvSource(PydanticBaseSettingsSource):
    """The variables the original shell scripts used, mapped onto settings keys."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env = os.environ
        out: dict[str, Any] = {}
        if env.get("LLAMACPP_URL"):
            out["llamacpp_url"] = env["LLAMACPP_URL"]
        if env.get("MLO_ADMIN_KEY"):
            out["security"] = {"admin_key": env["MLO_ADMIN_KEY"]}
        if env.get("HF_TOKEN"):
            out["hf_token"] = env["HF_TOKEN"]
        if env.get("LLM_PARALLEL"):
            out["engine"] = {"default_parallel": env["LLM_PARALLEL"]}
        if env.get("TF_MODELS"):
            out["storage"] = {"models_dir": env["TF_MODELS"]}
        return out


def client_headers() -> dict[str, str]:
    """What the CLI sends to a gateway that needs a key: `MLO_API_KEY`, else `MLO_ADMIN_KEY`."""
    key = os.environ.get("MLO_API_KEY") or os.environ.get("MLO_ADMIN_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def config_path(explicit: Path | None = None) -> Path | None:
    """The config file to read: explicit, else `$MLO_CONFIG`, else the XDG one if it exists."""
    if explicit is not None:
        return explicit
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    default = xdg_dir("config") / "config.toml"
    return default if default.is_file() else None


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate settings once; raise ConfigError naming each bad key."""
    chosen = config_path(path)
    if chosen is not None and not chosen.is_file():
        raise ConfigError(f"config file {chosen} does not exist (set {CONFIG_ENV} or --config)")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=chosen)

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, chosen)) from None
    except (OSError, ValueError) as exc:  # TOML syntax errors surface as ValueError
        raise ConfigError(f"cannot read config {chosen}: {exc}") from None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
    ]
    return f"invalid settings{where}: " + "; ".join(lines)
