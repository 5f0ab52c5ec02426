"""A server we run as a child process: the state machine stopped → starting → ready → stopping
(plus failed), shared by our llama.cpp engines (`llamacpp.py`) and managed commands such as
`vllm serve` (`command.py`); each supplies only its launch.

The child runs in its own process group and dies with the gateway (`PR_SET_PDEATHSIG`, and EOF
on its stdin). Its stderr is the model's log file. Stopping TERMs the group, then KILLs it:
killing the process is how its memory is given back.

A launcher that starts its engine with an API key (`_engine_key`, new for each start) has the
pooled client send it to that engine's address, and only while the engine runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from ml_offload.backends.base import ExitCallback, Launch
from ml_offload.backends.http import Upstream
from ml_offload.backends.pdeathsig import die_with_parent
from ml_offload.domain import ModelSpec, ModelState
from ml_offload.errors import EngineError, EngineTimeout, MloError

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


class ChildProcess:
    """One model's server process; subclasses implement `_launch` (start it, return its URL)."""

    def __init__(
        self, spec: ModelSpec, on_exit: ExitCallback, *, log_dir: Path, upstream: Upstream
    ) -> None:
        self.spec = spec
        self._on_exit = on_exit
        self._upstream = upstream  # the pooled client, for readiness probes
        self.log_path = engine_log(log_dir, spec.name)
        self._state = ModelState.STOPPED
        self._proc: asyncio.subprocess.Process | None = None
        self._url: str | None = None
        self._error: str | None = None
        self._starting: asyncio.Task[str] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.started_at: float | None = None
        self._launch_plan = Launch.unplaced(spec)
        self._engine_key: str | None = None  # set by a launcher whose engine requires it
        self._authorized: str | None = None  # the address the pooled client sends it to

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
        self._launch_plan = launch or Launch.unplaced(self.spec)
        if self._state is ModelState.STOPPING:
            await self.stop()
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start(timeout_s))
        return await asyncio.shield(self._starting)

    async def _launch(self) -> str:
        """Start the server and return its base URL once it answers."""
        raise NotImplementedError

    async def _start(self, timeout_s: float) -> str:
        self._state, self._error = ModelState.STARTING, None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting model %s (%s)", self.spec.name, type(self).__name__)
        try:
            async with asyncio.timeout(timeout_s):
                url = await self._launch()
        except TimeoutError:
            await self._kill()
            self._fail(f"model {self.spec.name!r} did not become ready within {timeout_s:.0f}s")
            raise EngineTimeout(self._error or "") from None
        except MloError as exc:
            await self._kill()
            self._fail(exc.message)
            raise
        if self._engine_key is not None:
            self._upstream.authorize(url, self._engine_key)
            self._authorized = url
        self._url, self._state, self.started_at = url, ModelState.READY, time.monotonic()
        assert self._proc is not None
        self._watcher = asyncio.create_task(self._watch(self._proc))
        return url

    def _new_engine_key(self) -> str:
        """A fresh random API key for the engine about to start; only the gateway knows it."""
        self._engine_key = secrets.token_urlsafe(32)
        return self._engine_key

    async def _spawn(
        self, argv: list[str], log_file: IO[bytes], env: Mapping[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv,
            env=None if env is None else {**os.environ, **env},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    async def _probe_health(self, url: str) -> None:
        """Poll /health with a short backoff (10 ms doubling to 100 ms) until it answers 200."""
        delay = 0.01
        while True:
            if self._proc is None or self._proc.returncode is not None:
                raise EngineError(
                    f"model {self.spec.name!r} failed to start: engine exited{self._log_tail()}"
                )
            with contextlib.suppress(EngineError):  # not listening yet
                status, _ = await self._upstream.get_json_bytes(f"{url}/health")
                if status == 200:
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._proc is not proc or self._state is not ModelState.READY:
            return
        self._url = None
        self._deauthorize()
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

    async def exited(self, within_s: float) -> bool:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), within_s)
        except TimeoutError:
            return False
        return True

    def request_done(self) -> None:
        return None

    async def _kill(self) -> None:
        """TERM the process group, KILL it after a grace period; killing frees the memory."""
        proc, self._proc = self._proc, None
        self._deauthorize()
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

    def _deauthorize(self) -> None:
        if self._authorized is not None:
            self._upstream.forget(self._authorized)
            self._authorized = None

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


def free_port() -> int:
    """A free loopback TCP port for a child server to listen on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def engine_log(log_dir: Path, name: str) -> Path:
    """Where model `name`'s engine writes its log (`mlo logs --model`)."""
    return log_dir / f"{safe_name(name)}.log"


def safe_name(name: str) -> str:
    """`name` as one file name (letters, digits, `._-`; anything else `_`)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
