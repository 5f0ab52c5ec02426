"""A server that already runs elsewhere (`LLAMACPP_URL`, a model with `url`, a cloud provider):
no process of ours, always ready; the scheduler only holds its slots."""

from __future__ import annotations

from ml_offload.backends.base import Launch
from ml_offload.domain import ModelSpec, ModelState


class RemoteServer:
    def __init__(self, spec: ModelSpec) -> None:
        assert spec.url is not None
        self.spec = spec
        self._url = spec.url.rstrip("/")

    @property
    def state(self) -> ModelState:
        return ModelState.READY

    @property
    def base_url(self) -> str | None:
        return self._url

    @property
    def pid(self) -> int | None:
        return None

    @property
    def last_error(self) -> str | None:
        return None

    async def ensure_ready(self, timeout_s: float, launch: Launch | None = None) -> str:
        return self._url

    async def stop(self) -> None:
        return None

    async def exited(self, within_s: float) -> bool:
        return False

    def request_done(self) -> None:
        return None
