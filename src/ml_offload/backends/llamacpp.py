"""A local llama.cpp server, one child process per model.

Two launchers: `xllamacpp` (llama.cpp's server in a Python child, which reports readiness on
stdout the moment it listens) and a `llama-server` binary (readiness probed on /health with a
short backoff). Both are given the same values from one place (`engine_config`): the layer count
and tensor split the scheduler placed, never the configured cap. Each start gets a new random
API key in the engine's environment (`LLAMA_API_KEY`), so the engine answers only the gateway.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

from ml_offload.backends.base import ExitCallback, Launch
from ml_offload.backends.child import ChildProcess, free_port
from ml_offload.backends.engine_child import API_KEY_ENV
from ml_offload.backends.http import Upstream
from ml_offload.backends.slot_keeper import SlotKeeper
from ml_offload.backends.standby import Standby
from ml_offload.config import EngineSettings
from ml_offload.domain import ModelSpec
from ml_offload.errors import ConfigError, EngineError
from ml_offload.vram import engine_ubatch

Launcher = Literal["xllamacpp", "llama-server"]


def resolve_engine_kind(engine: EngineSettings) -> Launcher:
    """`auto` picks xllamacpp when importable, else a `llama-server` binary on PATH."""
    if engine.kind != "auto":
        return engine.kind
    if importlib.util.find_spec("xllamacpp") is not None:  # not imported: the child does
        return "xllamacpp"
    if engine.llama_server_bin or shutil.which("llama-server"):
        return "llama-server"
    raise ConfigError(
        "engine.kind: no llama.cpp engine found; install the `xllamacpp` package "
        "(pip install xllamacpp) or set engine.llama_server_bin to a llama-server binary"
    )


def engine_config(
    spec: ModelSpec, launch: Launch, engine: EngineSettings, slot_save_path: Path | None = None
) -> dict[str, Any]:
    """What the engine is started with, whichever launcher runs it (placed values from
    `launch`; `slot_save_path`: where it saves and restores slots, None: it does not)."""
    return {
        "name": spec.name,
        "path": str(spec.path),
        "ctx_size": spec.ctx_size,
        "parallel": spec.parallel,
        "gpu_layers": launch.gpu_layers,
        "tensor_split": list(launch.tensor_split),
        "threads": engine.threads,
        "embeddings": spec.embeddings,
        "ubatch": engine_ubatch(spec.parallel, spec.embeddings),
        "flash_attn": engine.flash_attn,
        "chat_template_file": str(spec.chat_template_file) if spec.chat_template_file else None,
        "slot_save_path": None if slot_save_path is None else str(slot_save_path),
    }


def server_argv(binary: str, cfg: dict[str, Any], port: int) -> list[str]:
    """`llama-server`'s command line for an `engine_config` (extra args not included)."""
    argv = [binary, "--model", cfg["path"], "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--ctx-size", str(cfg["ctx_size"] * cfg["parallel"])]
    argv += ["--parallel", str(cfg["parallel"]), "--n-gpu-layers", str(cfg["gpu_layers"])]
    argv += ["--ubatch-size", str(cfg["ubatch"]), "--alias", cfg["name"], "--metrics"]
    if cfg["threads"]:
        argv += ["--threads", str(cfg["threads"])]
    if cfg["tensor_split"]:
        argv += ["--tensor-split", ",".join(f"{x:g}" for x in cfg["tensor_split"])]
    if cfg["embeddings"]:
        argv += ["--embeddings", "--pooling", "mean"]
    if cfg["flash_attn"] != "auto":
        argv += ["--flash-attn", cfg["flash_attn"]]
    if cfg["chat_template_file"]:
        argv += ["--jinja", "--chat-template-file", cfg["chat_template_file"]]
    if cfg["slot_save_path"]:
        argv += ["--slot-save-path", cfg["slot_save_path"]]
    return argv


class LlamaCppProcess(ChildProcess):
    """A GGUF model served by llama.cpp, through xllamacpp or a `llama-server` binary."""

    def __init__(
        self,
        spec: ModelSpec,
        on_exit: ExitCallback,
        *,
        engine: EngineSettings,
        launcher: Launcher,
        log_dir: Path,
        upstream: Upstream,
        slots: SlotKeeper | None = None,
        standby: Standby | None = None,
    ) -> None:
        assert spec.path is not None
        super().__init__(spec, on_exit, log_dir=log_dir, upstream=upstream)
        self._engine = engine
        self._launcher = launcher
        self._slots = slots  # conversations' slots, saved before the engine stops
        self._standby = standby  # the weights held in memory between runs

    @property
    def _weights(self) -> Path:
        assert self.spec.path is not None
        return self.spec.path

    def _config(self) -> dict[str, Any]:
        folder = None if self._slots is None else self._slots.files.folder
        return engine_config(self.spec, self._launch_plan, self._engine, folder)

    async def stop(self) -> None:
        url = self.base_url
        if self._slots is not None and url is not None:
            await self._slots.save(url)
        await super().stop()
        if self._standby is not None and url is not None:
            await self._standby.park(self.spec.name, self._weights)

    async def _launch(self) -> str:
        if self._standby is not None:
            self._standby.before_load(self.spec.name, self._weights)
        if self._launcher == "xllamacpp":
            url = await self._launch_xllamacpp()
        else:
            url = await self._launch_binary()
        if self._standby is not None:  # the engine holds the pages now
            self._standby.release(self.spec.name)
        return url

    async def _launch_xllamacpp(self) -> str:
        cfg = self._config()
        cfg["engine_params"] = {
            **_FLASH_PARAM[cfg["flash_attn"]],
            **_engine_params(self.spec.extra_args),
        }
        argv = [sys.executable, "-m", "ml_offload.backends.engine_child", json.dumps(cfg)]
        with self.log_path.open("ab") as log_file:
            self._proc = await self._spawn(argv, log_file, self._key_env())
        assert self._proc.stdout is not None
        line = (await self._proc.stdout.readline()).decode(errors="replace").strip()
        if line.startswith("READY "):
            return line.removeprefix("READY ").strip()
        reason = line.removeprefix("FAILED ").strip() or "engine exited during start"
        raise EngineError(f"model {self.spec.name!r} failed to start: {reason}{self._log_tail()}")

    async def _launch_binary(self) -> str:
        binary = self._engine.llama_server_bin or shutil.which("llama-server") or "llama-server"
        port = free_port()
        argv = server_argv(binary, self._config(), port)
        argv += [*self._engine.extra_args, *self.spec.extra_args]
        try:
            with self.log_path.open("ab") as log_file:
                self._proc = await self._spawn(argv, log_file, self._key_env())
        except OSError as exc:
            raise EngineError(f"cannot run llama-server {binary!r}: {exc}") from None
        url = f"http://127.0.0.1:{port}"
        await self._probe_health(url)
        return url

    def _key_env(self) -> dict[str, str]:
        return {API_KEY_ENV: self._new_engine_key()}


# engine.flash_attn as xllamacpp's CommonParams.flash_attn_type (llama_flash_attn_type)
_FLASH_PARAM: dict[str, dict[str, object]] = {
    "auto": {},
    "on": {"flash_attn_type": 1},
    "off": {"flash_attn_type": 0},
}


def _engine_params(extra_args: tuple[str, ...]) -> dict[str, object]:
    """`key=value` extra args become xllamacpp CommonParams attributes (values JSON-decoded)."""
    params: dict[str, object] = {}
    for arg in extra_args:
        key, sep, raw = arg.lstrip("-").partition("=")
        if not sep:
            raise ConfigError(
                f"models.extra_args: {arg!r} must be key=value for the xllamacpp engine"
            )
        try:
            params[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = raw
    return params
