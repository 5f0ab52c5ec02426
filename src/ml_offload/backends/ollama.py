"""A model held by an external Ollama server.

Ollama owns its process and memory; we ask it to load a model (`/api/generate` with an empty
prompt) and to unload it (`keep_alive: 0`) when our idle TTL passes or it must make room, so its
GPU memory is given back like our own engines'. Requests go through Ollama's OpenAI-compatible
API (`/v1/...`). Wire format: Ollama's API docs, "Load a model" and "Unload a model".

Keep-alive: the model stays loaded until we unload it (`keep_alive: -1`). Ollama's `/v1`
endpoints take no `keep_alive` (its `openai.ChatCompletionRequest` has no such field), so each
request there sets the model's keep-alive back to Ollama's default (5 minutes, or
`OLLAMA_KEEP_ALIVE`) and Ollama would drop a long-TTL or pinned model behind our back. After
each request we therefore send our keep-alive again (`request_done`): Ollama applies a
request's keep-alive when it schedules the request, so the last one scheduled wins, and every
`/v1` request is followed by one of ours. Bursts are folded into one refresh at a time. If
Ollama drops the model anyway (restarted, memory pressure), the probe of `/api/ps` tells the
scheduler (`Scheduler.dropped_elsewhere`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from ml_offload.backends.base import Launch
from ml_offload.backends.http import Upstream, translate
from ml_offload.domain import DeploymentKind, ModelSpec, ModelState
from ml_offload.errors import (
    EngineError,
    EngineTimeout,
    MloError,
    NotFound,
    UpstreamClientError,
    safe_url,
)

KEEP_LOADED = -1  # Ollama's keep_alive: stay loaded until unloaded (we unload on our TTL)
log = logging.getLogger(__name__)


class OllamaHeldModel:
    def __init__(self, spec: ModelSpec, upstream: Upstream) -> None:
        assert spec.url is not None
        self.spec = spec
        self._upstream = upstream
        self._url = spec.url.rstrip("/")
        self._model = spec.upstream_model
        self._state = ModelState.STOPPED
        self._error: str | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._again = False  # a request ended while a refresh was under way

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def base_url(self) -> str | None:
        return self._url if self._state is ModelState.READY else None

    @property
    def pid(self) -> int | None:
        return None

    @property
    def last_error(self) -> str | None:
        return self._error

    async def ensure_ready(self, timeout_s: float, launch: Launch | None = None) -> str:
        if self._state is ModelState.READY:
            return self._url
        self._state = ModelState.STARTING
        try:
            await self._generate({"keep_alive": KEEP_LOADED}, timeout_s)
        except EngineError as exc:
            self._state, self._error = ModelState.FAILED, exc.message
            raise
        self._state, self._error = ModelState.READY, None
        return self._url

    async def exited(self, within_s: float) -> bool:
        return False

    def request_done(self) -> None:
        """Send our keep-alive again after a `/v1` request replaced it (see the docstring)."""
        if self._state is not ModelState.READY:
            return
        if self._refresh is not None and not self._refresh.done():
            self._again = True
            return
        self._refresh = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        while True:
            self._again = False
            try:
                await self._generate({"keep_alive": KEEP_LOADED}, 30)
            except EngineError as exc:  # the probe of /api/ps sees what Ollama holds
                log.warning("Ollama keep-alive for %r not renewed: %s", self._model, exc.message)
            if not self._again or self._state is not ModelState.READY:
                return

    async def stop(self) -> None:
        if self._state is ModelState.STOPPED:
            return
        self._state = ModelState.STOPPING
        if self._refresh is not None:
            self._refresh.cancel()  # an unload must not be followed by a keep-alive
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        try:
            await self._generate({"keep_alive": 0}, 30)
        finally:
            self._state = ModelState.STOPPED

    async def _generate(self, extra: dict[str, object], timeout_s: float) -> None:
        body = orjson.dumps({"model": self._model, "prompt": "", "stream": False, **extra})
        try:
            async with asyncio.timeout(timeout_s):
                status, raw = await self._upstream.post(f"{self._url}/api/generate", body)
        except TimeoutError:
            raise EngineTimeout(
                f"Ollama at {safe_url(self._url)} did not answer in {timeout_s:.0f}s"
            ) from None
        except EngineError as exc:
            raise EngineError(
                f"cannot reach Ollama at {safe_url(self._url)}: {exc.message}"
            ) from None
        if status != 200:
            raise EngineError(
                f"Ollama at {safe_url(self._url)} refused {self._model!r}: {_message(raw)}"
            )


def _message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")[:300]
    return str(data.get("error", data)) if isinstance(data, dict) else str(data)[:300]


# -- pull passthrough ----------------------------------------------------------------------
# Ollama's API docs, "Pull a Model": POST /api/pull {"model", "insecure"?, "stream"?}; streamed
# NDJSON progress (`{"status": "pulling manifest"}`, `{"status": "pulling <digest>", "digest",
# "total", "completed"}`, ..., `{"status": "success"}`), or one `{"status": "success"}`.


def pull_target(specs: list[ModelSpec], spec: ModelSpec | None, name: str) -> tuple[str, str]:
    """(Ollama base URL, model name there) for pulling `name`: the Ollama behind the model it
    names, else the one Ollama server configured. Raises NotFound naming what to configure."""
    if spec is not None and spec.kind is DeploymentKind.OLLAMA and spec.url:
        return spec.url.rstrip("/"), spec.upstream_model
    servers = sorted(
        {s.url.rstrip("/") for s in specs if s.kind is DeploymentKind.OLLAMA and s.url}
    )
    if len(servers) == 1:
        return servers[0], name
    if not servers:
        raise NotFound(
            f"cannot pull {name!r}: no Ollama server is configured; add a model with "
            'backend = "ollama" and its url, or use `mlo pull` for GGUF files'
        )
    raise NotFound(
        f"cannot pull {name!r}: {len(servers)} Ollama servers are configured; name a model "
        "declared on the one to pull to"
    )


class PullProgress:
    """Ollama's NDJSON progress lines as they come; `aclose()` gives the connection back."""

    def __init__(self, resp: aiohttp.ClientResponse, url: str) -> None:
        self._resp, self._url = resp, url

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            async for line in self._resp.content:
                yield line
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, self._url) from None

    async def aclose(self) -> None:
        self._resp.close()


async def pull(
    upstream: Upstream, base_url: str, remote: str, body: dict[str, Any]
) -> bytes | PullProgress:
    """Ask Ollama to pull `remote`: its one JSON answer (`"stream": false`), or its progress."""
    stream = body.get("stream", True) is not False
    url = base_url + "/api/pull"
    resp = await upstream.open(url, orjson.dumps({**body, "model": remote, "stream": stream}))
    if resp.status == 200 and stream:
        return PullProgress(resp, url)
    try:
        raw = await resp.read()
    finally:
        resp.close()
    if resp.status != 200:
        raise pull_error(resp.status, raw)
    return raw


def pull_error(status: int, raw: bytes) -> MloError:
    """Ollama's `{"error": "..."}` as our error, the client's mistake or the server's."""
    message = f"Ollama: {_message(raw)}"
    if status < 500:
        return UpstreamClientError(message, status=status)
    return EngineError(message, upstream=True)
