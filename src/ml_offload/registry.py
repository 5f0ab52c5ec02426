"""The model registry: every servable model by name and alias, and what each one is.

Sources, first claim on a name wins: config `[[models]]`, `LLAMACPP_URL` (remote model
`llamacpp`), `*.gguf` files in the model folder, the bundled SmolLM2 demo model. The registry
sets each deployment's kind (`DeploymentKind`), and its redaction default from its address
(`leaves_machine`, applied in `_remote` for every way an address is given). `refresh`
rebuilds the list (reading GGUF headers only for new or changed files) and stores it;
`resolve` is a dict lookup on the request path and never touches the database.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import SecretStr

from ml_offload.backends.protocol import DEFAULT_KEY_ENV, DEFAULT_URLS
from ml_offload.chat_templates import chat_template_path
from ml_offload.config import ModelConfig, Settings
from ml_offload.domain import DeploymentKind, GgufInfo, ModelSpec, is_name_pattern, leaves_machine
from ml_offload.errors import InvalidModelFile, InvalidRequest, ModelNotFound, Unavailable
from ml_offload.gguf import (
    chat_template,
    demo_model_path,
    read_gguf_info,
    split_shard,
)
from ml_offload.storage import FileStamp, ModelRepository
from ml_offload.wire.vllm import serve_argv

log = logging.getLogger(__name__)

DEMO_MODEL_NAME = "smollm2-135m"
ENV_MODEL_NAME = "llamacpp"
_LISTED_NAMES = 10


@dataclass(slots=True)
class _Found:
    """Models collected during one refresh, and the names and files they claim."""

    specs: list[ModelSpec] = field(default_factory=list)
    stamps: dict[str, FileStamp] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    files: set[Path] = field(default_factory=set)

    def add(self, spec: ModelSpec, stamp: FileStamp | None = None) -> None:
        clash = [n for n in spec.names if n in self.names]
        if clash:
            log.warning("%s model %r skipped: name %r is taken", spec.source, spec.name, clash[0])
            return
        self.specs.append(spec)
        self.names.update(spec.names)
        if spec.path is not None:
            self.files.add(_identity(spec.path))
        if stamp is not None:
            self.stamps[spec.name] = stamp


def _with_copies(found: _Found, copies: dict[str, str]) -> _Found:
    """Copies (Ollama's /api/copy) as aliases of their models; a copy whose model is gone, or
    whose name a source took since, is dropped."""
    for alias, name in list(copies.items()):
        at = next((i for i, s in enumerate(found.specs) if s.name == name), None)
        if at is None or alias in found.names:
            del copies[alias]
            continue
        spec = found.specs[at]
        found.specs[at] = replace(spec, aliases=(*spec.aliases, alias))
        found.names.add(alias)
    return found


def engine_template(spec: ModelSpec) -> str | None:
    """The chat template our engine runs for `spec` (its `chat_template_file`, else the GGUF's
    own); None for other deployments, or when it cannot be read."""
    if spec.kind is not DeploymentKind.LLAMACPP or spec.path is None:
        return None
    try:
        return chat_template(spec.path, spec.chat_template_file)
    except (OSError, UnicodeDecodeError, InvalidModelFile):
        return None


def offers_tools(spec: ModelSpec) -> bool:
    """Whether tools reach the model as tools: our engine runs the model's chat template,
    which must render them; other servers take OpenAI's (or their own) tools themselves."""
    if spec.kind is not DeploymentKind.LLAMACPP or spec.path is None:
        return True
    return "tools" in (engine_template(spec) or "")


def unavailable_reason(spec: ModelSpec) -> str | None:
    """Why `spec` cannot be served as configured (its file is gone, a cloud provider has no
    key), checked before each start so the caller hears it at once; None when it can be."""
    if spec.kind is DeploymentKind.LLAMACPP and spec.path is not None and not spec.path.exists():
        return f"model file {spec.path} is missing; put it back or remove the model"
    template = spec.chat_template_file
    if spec.kind is DeploymentKind.LLAMACPP and template is not None and not template.is_file():
        return f"chat template {template} is missing; put it back or fix chat_template_file"
    if spec.kind is DeploymentKind.CLOUD and spec.api_key is None:
        env = DEFAULT_KEY_ENV.get(spec.backend, "the variable in its api_key_env")
        return f"no API key for {spec.backend}: set {env} (or the model's api_key_env)"
    return None


@dataclass(frozen=True, slots=True)
class Changes:
    """What a refresh changed: models added, removed, and changed (file, config), by name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    total: int = 0

    def summary(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if names
        ]
        return f" ({'; '.join(parts)})" if parts else ""


def _changes(before: dict[str, ModelSpec], after: list[ModelSpec]) -> Changes:
    now = {spec.name: spec for spec in after}
    return Changes(
        added=tuple(sorted(now.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - now.keys())),
        changed=tuple(sorted(n for n in now.keys() & before.keys() if now[n] != before[n])),
        total=len(now),
    )


class ModelRegistry:
    def __init__(self, settings: Settings, repo: ModelRepository) -> None:
        self._settings = settings
        self._repo = repo
        self._lock = asyncio.Lock()
        self._models: list[ModelSpec] = []
        self._index: dict[str, ModelSpec] = {}
        self._patterns: list[tuple[str, ModelSpec]] = []
        self._folded: dict[str, ModelSpec] = {}
        self._copies: dict[str, str] = {}  # Ollama's /api/copy: alias → model (until restart)

    async def copy(self, source: str, destination: str) -> None:
        """Ollama's copy, as an alias: `destination` names the model `source` names."""
        spec = self.resolve(source)
        taken = self._index.get(destination)
        if taken is not None and taken.name != spec.name:
            raise InvalidRequest(
                f"destination: {destination!r} already names model {taken.name!r}; pick another",
                param="destination",
            )
        self._copies[destination] = spec.name
        await self.refresh()

    async def reload(self, settings: Settings) -> list[str]:
        """Take new settings (SIGHUP) and rescan; the names of models that changed or went."""
        self._settings = settings
        changes = await self.refresh()
        return sorted({*changes.removed, *changes.changed})

    async def refresh(self) -> Changes:
        """Rebuild the model list from its sources, store it, then swap the index in; what
        changed since the last refresh (everything, the first time)."""
        async with self._lock:
            before = {spec.name: spec for spec in self._models}
            found = await self._collect()
            await self._persist(found)
            self._swap(found.specs)
        changes = _changes(before, found.specs)
        log.info("registry: %d models%s", len(self._models), changes.summary())
        log.debug("registry: %s", ", ".join(self._index_names()))
        return changes

    def resolve(self, name: str) -> ModelSpec:
        """The model called `name` (or with that alias; exact, else case-insensitive)."""
        spec = self._index.get(name) or self._folded.get(name.casefold()) or self._matched(name)
        if spec is None:
            raise ModelNotFound(self._not_found(name), param="model")
        return spec

    def all(self) -> list[ModelSpec]:
        return list(self._models)

    async def stored(self) -> list[ModelSpec]:
        """The models as last recorded in the database (no scan: for readers like `mlo ls`)."""
        return await self._repo.list_all()

    async def _collect(self) -> _Found:
        settings, found = self._settings, _Found()
        for config in settings.models:
            await self._add_config(found, config)
        if settings.llamacpp_url:
            found.add(_env_remote(settings))
        if settings.scan_models_dir:
            for name, path in _scan(settings.storage.models_path):
                if _identity(path) in found.files:
                    log.debug("%s is already registered from config", path)
                elif name not in found.names:
                    await self._add_local(found, name, path, "scan")
                else:
                    log.info("%s not registered: the name %r is already taken", path, name)
        demo = demo_model_path() if settings.demo_model else None
        if demo and DEMO_MODEL_NAME not in found.names and _identity(demo) not in found.files:
            await self._add_local(found, DEMO_MODEL_NAME, demo, "demo")
        return _with_copies(found, self._copies)

    async def _add_config(self, found: _Found, config: ModelConfig) -> None:
        if config.serve is not None:  # a server we start: local, like our engines
            spec = _remote(self._settings, config.name, DeploymentKind.MANAGED, None, "config")
            found.add(_apply(spec, config))
        elif config.path is None:  # a server elsewhere, or a cloud provider's default URL
            found.add(_declared_remote(self._settings, config))
        else:
            path = self._settings.storage.models_path / config.path.expanduser()
            await self._add_local(found, config.name, path.absolute(), "config", config)

    async def _add_local(
        self, found: _Found, name: str, path: Path, source: str, config: ModelConfig | None = None
    ) -> None:
        """A broken or missing file is skipped when scanned, kept without metadata if named."""
        read = await self._read(path)
        if read is None and source == "scan":
            return
        info, stamp = read or (None, None)
        spec = ModelSpec(
            name=name,
            kind=DeploymentKind.LLAMACPP,
            path=path,
            ctx_size=self._default_ctx_size(info),
            parallel=self._settings.engine.default_parallel,
            ttl_s=self._settings.scheduler.default_ttl_s,
            info=info,
            source=source,
        )
        found.add(_apply(spec, config) if config else spec, stamp)

    def _default_ctx_size(self, info: GgufInfo | None) -> int:
        """The configured default, capped at what the model was trained for."""
        default = self._settings.engine.default_ctx_size
        trained = info.context_length if info else None
        return min(default, trained) if trained else default

    async def _read(self, path: Path) -> tuple[GgufInfo, FileStamp] | None:
        """GGUF metadata, from the database when the file is unchanged; None if unreadable."""
        try:
            stat = path.stat()
        except OSError as exc:
            log.warning("model file %s: %s", path, exc.strerror or exc)
            return None
        stamp = FileStamp(stat.st_size, stat.st_mtime_ns)
        try:
            cached = await self._repo.cached_info(path, *stamp)
        except Unavailable as exc:
            log.warning("metadata cache unavailable, reading %s: %s", path, exc.message)
            cached = None
        if cached is not None:
            return cached, stamp
        try:
            return await asyncio.to_thread(read_gguf_info, path), stamp
        except InvalidModelFile as exc:
            log.warning("%s", exc.message)
            return None

    async def _persist(self, found: _Found) -> None:
        """Store the list; a database outage must not stop serving, so it is only logged."""
        try:
            await self._repo.upsert_many(found.specs, found.stamps)
            gone = await self._repo.remove_missing({spec.name for spec in found.specs})
        except Unavailable as exc:
            log.warning("registry not saved: %s", exc.message)
            return
        if gone:
            log.info("registry: removed %s", ", ".join(gone))

    def _swap(self, specs: list[ModelSpec]) -> None:
        index = {name: spec for spec in specs for name in spec.names}
        folded: dict[str, ModelSpec] = {}
        for name, spec in index.items():
            folded.setdefault(name.casefold(), spec)
        self._models = sorted(specs, key=lambda spec: spec.name)
        self._index, self._folded = index, folded
        self._patterns = [(n, spec) for spec in specs for n in spec.aliases if is_name_pattern(n)]

    def _matched(self, name: str) -> ModelSpec | None:
        """The first model (in config order) with a glob alias that matches `name`, so the
        `claude-*` or `gpt-*` names clients insist on reach a chosen model."""
        for pattern, spec in self._patterns:
            if fnmatch.fnmatchcase(name, pattern):
                return spec
        return None

    def _index_names(self) -> list[str]:
        return [spec.name for spec in self._models]

    def _not_found(self, name: str) -> str:
        names = self._index_names()
        if not names:
            return (
                f"model {name!r} not found; no models are registered: put .gguf files in "
                f"{self._settings.storage.models_path} or declare [[models]] in the config"
            )
        listed = ", ".join(names[:_LISTED_NAMES])
        more = f" and {len(names) - _LISTED_NAMES} more" if len(names) > _LISTED_NAMES else ""
        return f"model {name!r} not found; available: {listed}{more} (see GET /v1/models)"


def remote_specs(settings: Settings) -> list[ModelSpec]:
    """The deployments served elsewhere (config `url`, a cloud provider's default URL,
    `LLAMACPP_URL`), built as `refresh` builds them but with no file or database read: what
    `mlo security-audit` checks (where prompts go, and whether they are redacted)."""
    found = _Found()
    for config in settings.models:
        if config.serve is None and config.path is None:
            found.add(_declared_remote(settings, config))
    if settings.llamacpp_url:
        found.add(_env_remote(settings))
    return found.specs


def _declared_remote(settings: Settings, config: ModelConfig) -> ModelSpec:
    url = config.url or DEFAULT_URLS[config.backend]
    return _apply(_remote(settings, config.name, _remote_kind(config), url, "config"), config)


def _env_remote(settings: Settings) -> ModelSpec:
    url = settings.llamacpp_url
    return _remote(settings, ENV_MODEL_NAME, DeploymentKind.REMOTE, url, "env")


def _remote(
    settings: Settings, name: str, kind: DeploymentKind, url: str | None, source: str
) -> ModelSpec:
    """A deployment that is no GGUF file of ours; redacted when `url` leaves the machine."""
    return ModelSpec(
        name=name,
        kind=kind,
        url=url,
        redact=leaves_machine(url),
        ctx_size=settings.engine.default_ctx_size,
        parallel=settings.engine.default_parallel,
        ttl_s=settings.scheduler.default_ttl_s,
        source=source,
    )


def _remote_kind(config: ModelConfig) -> DeploymentKind:
    """What a `[[models]]` entry with no file and no command is."""
    if config.backend == "ollama":
        return DeploymentKind.OLLAMA
    return DeploymentKind.REMOTE if config.url else DeploymentKind.CLOUD


def _apply(spec: ModelSpec, config: ModelConfig) -> ModelSpec:
    """Config values over the defaults in `spec` (its kind, address and file stay)."""
    return replace(
        spec,
        api_key=_api_key(config, spec.kind),
        command=_command(config),
        aliases=tuple(config.aliases),
        ctx_size=config.ctx_size or spec.ctx_size,
        parallel=config.parallel or spec.parallel,
        max_gpu_layers=None if config.max_gpu_layers < 0 else config.max_gpu_layers,
        max_concurrency=config.max_concurrency,
        ttl_s=spec.ttl_s if config.ttl_s is None else config.ttl_s,
        extra_args=tuple(config.extra_args),
        chat_template_file=(
            chat_template_path(config.chat_template_file) if config.chat_template_file else None
        ),
        pinned=config.pinned,
        embeddings=config.embeddings,
        backend=config.backend,
        remote_model=config.remote_model,
        fallbacks=tuple(config.fallbacks),
        redact=spec.redact if config.redact is None else config.redact,
    )


def _api_key(config: ModelConfig, kind: DeploymentKind) -> SecretStr | None:
    """The configured key, else the named environment variable, else (cloud providers only)
    the provider's usual one: a local model never looks up or gets a provider's key."""
    if config.api_key is not None:
        return config.api_key
    env = config.api_key_env
    if env is None and kind is DeploymentKind.CLOUD:
        env = DEFAULT_KEY_ENV.get(config.backend)
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        log.warning("model %r: environment variable %s is not set; no API key", config.name, env)
        return None
    return SecretStr(value)


def _command(config: ModelConfig) -> tuple[str, ...]:
    serve = config.serve
    if serve is None:
        return ()
    return serve_argv(
        serve.command,
        serve.model,
        served_name=config.name,
        tensor_parallel_size=serve.tensor_parallel_size,
        pipeline_parallel_size=serve.pipeline_parallel_size,
        ray_address=serve.ray_address,
        quantization=serve.quantization,
        max_model_len=serve.max_model_len,
        gpu_memory_utilization=serve.gpu_memory_utilization,
        extra_args=serve.extra_args,
    )


def _scan(folder: Path) -> list[tuple[str, Path]]:
    """(name, path) of the GGUF models under `folder`: first shards only, no projectors."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.absolute().rglob("*.gguf")):
        relative = path.relative_to(folder.absolute())
        if any(part.startswith(".") for part in relative.parts):
            continue  # .cache/ of downloads, hidden folders
        shard = split_shard(path)
        if shard is not None and shard[0] != 1:
            continue
        stem = path.stem[: -len("-00001-of-00001")] if shard else path.stem
        if stem.lower().startswith("mmproj"):
            continue  # a vision projector, loaded alongside a model, not a model
        found.append((stem.lower(), path))
    return found


def _identity(path: Path) -> Path:
    """A file's identity for "already registered": symlinks and `..` resolved."""
    return Path(os.path.realpath(path))
