"""A fake engine process for tests of the scheduler: starts instantly, records calls."""

from __future__ import annotations

import asyncio

from ml_offload.backends.base import ExitCallback, Launch
from ml_offload.domain import ModelSpec, ModelState
from ml_offload.errors import EngineError


class FakeProcess:
    def __init__(
        self,
        spec: ModelSpec,
        on_exit: ExitCallback | None = None,
        *,
        start_delay_s: float = 0.0,
        fail_start: bool = False,
    ) -> None:
        self.spec = spec
        self._on_exit = on_exit
        self._state = ModelState.STOPPED
        self.start_delay_s = start_delay_s
        self.fail_start = fail_start
        self.starts = 0
        self.stops = 0
        self.requests_done = 0
        self._starting: asyncio.Future[str] | None = None
        self.launch: Launch | None = None

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def base_url(self) -> str | None:
        return f"http://fake/{self.spec.name}" if self._state is ModelState.READY else None

    @property
    def pid(self) -> int | None:
        return 4242 if self._state is ModelState.READY else None

    @property
    def last_error(self) -> str | None:
        return "fake start failure" if self._state is ModelState.FAILED else None

    async def ensure_ready(self, timeout_s: float, launch: Launch | None = None) -> str:
        if self._state is ModelState.READY:
            return f"http://fake/{self.spec.name}"
        self.launch = launch
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        try:
            return await asyncio.shield(self._starting)
        finally:
            if self._starting.done():
                self._starting = None

    async def _start(self) -> str:
        self.starts += 1
        self._state = ModelState.STARTING
        await asyncio.sleep(self.start_delay_s)
        if self.fail_start:
            self._state = ModelState.FAILED
            raise EngineError(f"model {self.spec.name!r} failed to start: fake start failure")
        self._state = ModelState.READY
        return f"http://fake/{self.spec.name}"

    async def stop(self) -> None:
        if self._state is not ModelState.STOPPED:
            self.stops += 1
        self._state = ModelState.STOPPED

    async def exited(self, within_s: float) -> bool:
        return self._state is ModelState.FAILED

    def request_done(self) -> None:
        self.requests_done += 1

    def crash(self) -> None:
        """Simulate the engine dying on its own."""
        self._state = ModelState.FAILED
        if self._on_exit:
            self._on_exit(self.spec, "fake crash")
