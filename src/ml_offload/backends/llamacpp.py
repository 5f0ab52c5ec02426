"""A local llama.cpp server, one child process per model.

Two launchers: `xllamacpp` (llama.cpp's server in a Python child, which reports readiness on
stdout the moment it listens) and a `llama-server` binary (readiness probed on /health with a
short backoff). The child runs in its own process group and dies with the gateway
(`PR_SET_PDEATHSIG`, and EOF on its stdin). Its stderr is the model's log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO

import aiohttp

from ml_offload.backends.base import ExitCallback, Launch
from ml_offload.backends.pdeathsig import die_with_parent
from ml_offload.config import EngineSettings
from ml_offload.domain import ModelSpec, ModelState
from ml_offload.errors import ConfigError, EngineError, EngineTimeout, MloError

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


def resolve_engine_kind(engine: EngineSettings) -> str:
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


class ModelProcess:
    """State machine stopped → starting → ready → stopping (plus failed) for one model."""

    def __init__(
        self,
        spec: ModelSpec,
        on_exit: ExitCallback,
        *,
        engine: EngineSettings,
        kind: str,
        log_dir: Path,
    ) -> None:
        assert spec.path is not None or spec.command
        self.spec = spec
        self._on_exit = on_exit
        self._engine = engine
        self._kind = kind
        self.log_path = log_dir / f"{_safe(spec.name)}.log"
        self._state = ModelState.STOPPED
        self._proc: asyncio.subprocess.Process | None = None
        self._url: str | None = None
        self._error: str | None = None
        self._starting: asyncio.Task[str] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.started_at: float | None = None
        self._launch = Launch(gpu_layers=spec.gpu_layers)

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def base_url(self) -> str | None:
        return self._url if self._state is ModelState.READY else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    @property
    def last_error(self) -> str | None:
        return self._error

    async def ensure_ready(self, timeout_s: float, launch: Launch | None = None) -> str:
        if self._state is ModelState.READY and self._url:
            return self._url
        self._launch = launch or Launch(gpu_layers=self.spec.gpu_layers)
        if self._state is ModelState.STOPPING:
            await self.stop()
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start(timeout_s))
        return await asyncio.shield(self._starting)

    async def _start(self, timeout_s: float) -> str:
        self._state, self._error = ModelState.STARTING, None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting model %s (%s)", self.spec.name, self._kind)
        try:
            async with asyncio.timeout(timeout_s):
                url = await (
                    self._launch_xllamacpp() if self._kind == "xllamacpp" else self._launch_binary()
                )
        except TimeoutError:
            await self._kill()
            self._fail(f"model {self.spec.name!r} did not become ready within {timeout_s:.0f}s")
            raise EngineTimeout(self._error or "") from None
        except MloError as exc:
            await self._kill()
            self._fail(exc.message)
            raise
        self._url, self._state, self.started_at = url, ModelState.READY, time.monotonic()
        assert self._proc is not None
        self._watcher = asyncio.create_task(self._watch(self._proc))
        return url

    async def _spawn(self, argv: list[str], log_file: IO[bytes]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    async def _launch_xllamacpp(self) -> str:
        cfg = {
            "name": self.spec.name,
            "path": str(self.spec.path),
            "ctx_size": self.spec.ctx_size,
            "parallel": self.spec.parallel,
            "gpu_layers": self._launch.gpu_layers,
            "tensor_split": list(self._launch.tensor_split),
            "threads": self._engine.threads,
            "embeddings": self.spec.embeddings,
            "engine_params": {
                **_FLASH_PARAM[self._engine.flash_attn],
                **_engine_params(self.spec.extra_args),
            },
        }
        argv = [sys.executable, "-m", "ml_offload.backends.engine_child", json.dumps(cfg)]
        with self.log_path.open("ab") as log_file:
            self._proc = await self._spawn(argv, log_file)
        assert self._proc.stdout is not None
        line = (await self._proc.stdout.readline()).decode(errors="replace").strip()
        if line.startswith("READY "):
            return line.removeprefix("READY ").strip()
        reason = line.removeprefix("FAILED ").strip() or "engine exited during start"
        raise EngineError(f"model {self.spec.name!r} failed to start: {reason}{self._log_tail()}")

    async def _launch_binary(self) -> str:
        binary = self._engine.llama_server_bin or shutil.which("llama-server") or "llama-server"
        port = _free_port()
        argv = [
            binary,
            "--model",
            str(self.spec.path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ctx-size",
            str(self.spec.ctx_size * self.spec.parallel),
            "--parallel",
            str(self.spec.parallel),
            "--n-gpu-layers",
            str(self.spec.gpu_layers),
            "--alias",
            self.spec.name,
            "--metrics",
        ]
        if self._engine.threads:
            argv += ["--threads", str(self._engine.threads)]
        if self._launch.tensor_split:
            argv += ["--tensor-split", ",".join(f"{x:g}" for x in self._launch.tensor_split)]
        if self.spec.embeddings:
            argv += ["--embeddings", "--pooling", "mean"]
        if self._engine.flash_attn != "auto":
            argv += ["--flash-attn", self._engine.flash_attn]
        argv += [*self._engine.extra_args, *self.spec.extra_args]
        try:
            with self.log_path.open("ab") as log_file:
                self._proc = await self._spawn(argv, log_file)
        except OSError as exc:
            raise EngineError(f"cannot run llama-server {binary!r}: {exc}") from None
        url = f"http://127.0.0.1:{port}"
        await self._probe_health(url)
        return url

    async def _probe_health(self, url: str) -> None:
        """Poll /health with a short backoff (10 ms doubling to 100 ms) until it answers 200."""
        delay = 0.01
        async with aiohttp.ClientSession() as session:
            while True:
                if self._proc is None or self._proc.returncode is not None:
                    raise EngineError(
                        f"model {self.spec.name!r} failed to start: engine exited{self._log_tail()}"
                    )
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{url}/health") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._proc is not proc or self._state is not ModelState.READY:
            return
        self._url = None
        self._fail(f"engine for model {self.spec.name!r} exited with code {code}{self._log_tail()}")
        self._on_exit(self.spec, self._error or "")

    def _fail(self, message: str) -> None:
        self._state, self._error = ModelState.FAILED, message
        log.warning("%s", message)

    async def stop(self) -> None:
        if self._starting and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        if self._proc is None:
            self._state = ModelState.STOPPED
            return
        self._state = ModelState.STOPPING
        await self._kill()
        self._state, self._url = ModelState.STOPPED, None

    async def _kill(self) -> None:
        """TERM the process group, KILL it after a grace period; killing frees the memory."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._watcher:
            self._watcher.cancel()
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        if proc.stdin:
            proc.stdin.close()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - 8192))
                tail = deque(fh.read().decode(errors="replace").splitlines(), maxlen=lines)
        except OSError:
            return ""
        text = " | ".join(t.strip() for t in tail if t.strip())
        return f" (engine log {self.log_path}: {text})" if text else ""


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


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
