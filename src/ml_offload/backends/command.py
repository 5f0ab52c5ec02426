"""A configured server command run as a managed child, like our llama.cpp engines: `vllm serve
<model> ...` (see `wire/vllm.py` for the command line). It gets a free loopback port, is ready
once `GET /health` answers 200 (vLLM's health endpoint), runs in its own process group, dies
with the gateway, and is stopped (TERM, then KILL) to give its GPU memory back.
"""

from __future__ import annotations

from pathlib import Path

from ml_offload.backends.base import ExitCallback
from ml_offload.backends.child import ChildProcess, free_port
from ml_offload.backends.http import Upstream
from ml_offload.domain import ModelSpec
from ml_offload.errors import EngineError
from ml_offload.wire.vllm import with_address


class CommandProcess(ChildProcess):
    """The state machine, logs and stopping of `ChildProcess`; the launch runs `spec.command`."""

    def __init__(
        self, spec: ModelSpec, on_exit: ExitCallback, *, log_dir: Path, upstream: Upstream
    ) -> None:
        assert spec.command
        super().__init__(spec, on_exit, log_dir=log_dir, upstream=upstream)

    async def _launch(self) -> str:
        port = free_port()
        argv = with_address(self.spec.command, port)
        try:
            with self.log_path.open("ab") as log_file:
                self._proc = await self._spawn(argv, log_file)
        except OSError as exc:
            raise EngineError(
                f"cannot run {argv[0]!r} for model {self.spec.name!r}: {exc}; install vLLM "
                "(pip install vllm) or set models.serve.command"
            ) from None
        url = f"http://127.0.0.1:{port}"
        await self._probe_health(url)
        return url
