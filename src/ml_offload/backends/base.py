"""The protocol every deployment's process (ours, remote, Ollama-held or fake) follows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ml_offload.domain import ModelSpec, ModelState


@dataclass(frozen=True, slots=True)
class Launch:
    """Where the scheduler placed a model: layers to offload and their split across GPUs."""

    gpu_layers: int = -1  # the placed count (-1: all)
    tensor_split: tuple[float, ...] = ()

    @classmethod
    def unplaced(cls, spec: ModelSpec) -> Launch:
        """For a start without a placement (no scheduler): the configured cap, else all."""
        return cls(gpu_layers=-1 if spec.max_gpu_layers is None else spec.max_gpu_layers)


class EngineProcess(Protocol):
    """One model's engine. `ensure_ready` is idempotent: concurrent callers share one start."""

    spec: ModelSpec

    @property
    def state(self) -> ModelState: ...

    @property
    def base_url(self) -> str | None: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def last_error(self) -> str | None: ...

    async def ensure_ready(self, timeout_s: float, launch: Launch | None = None) -> str:
        """Start the engine if needed and return its base URL once it answers."""
        ...

    async def stop(self) -> None:
        """Stop the engine and give its memory back; a no-op when stopped."""
        ...

    async def exited(self, within_s: float) -> bool:
        """Whether the engine's process died (waiting up to `within_s` for it to be reaped);
        False for servers we do not run."""
        ...

    def request_done(self) -> None:
        """A request on this engine ended (Ollama: re-apply our keep-alive, which each of its
        OpenAI-compatible requests replaces with its own default); must not block."""
        ...


ExitCallback = Callable[[ModelSpec, str], None]
ProcessFactory = Callable[[ModelSpec, ExitCallback], EngineProcess]
