"""Background probes of the servers we do not run ourselves: vLLM's `/metrics` (its running and
waiting requests and KV cache use, for load-aware routing), TGI's `/info` (model id, health) and
Ollama's `/api/tags` and `/api/ps` (is the model pulled, is it loaded and in how much VRAM).

One task probes every target each `interval_s`, each probe bounded by a timeout so a hung
server cannot stall the others. A probe older than `stale_after` intervals, or a failed one, is
no load figure at all: the router then goes by what it knows itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import orjson

from ml_offload.backends.http import Upstream
from ml_offload.domain import DeploymentKind, ModelSpec
from ml_offload.errors import EngineError, safe_url
from ml_offload.wire.vllm import VllmLoad, parse_metrics

log = logging.getLogger(__name__)

PROBED = ("vllm", "tgi", "ollama")
Targets = Callable[[], Iterable[tuple[ModelSpec, str]]]  # (spec, base URL) to probe now
Dropped = Callable[[str, float], Awaitable[object]]  # (model, when probed): not loaded there


@dataclass(frozen=True, slots=True)
class Probe:
    at: float  # monotonic time of the answer
    ok: bool
    load: VllmLoad | None = None
    model_id: str | None = None
    error: str | None = None
    loaded: bool | None = None  # Ollama: the model is in its memory now
    vram_bytes: int | None = None  # Ollama: how much of it is in GPU memory


class BackendMonitor:
    def __init__(
        self,
        upstream: Upstream,
        targets: Targets,
        *,
        interval_s: float = 2.0,
        stale_after: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        on_dropped: Dropped | None = None,
    ) -> None:
        self._upstream = upstream
        self._targets = targets
        self._on_dropped = on_dropped
        self.interval_s = interval_s
        self._max_age_s = interval_s * stale_after
        self._clock = clock
        self._probes: dict[str, Probe] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def get(self, name: str) -> Probe | None:
        return self._probes.get(name)

    def age_s(self, probe: Probe) -> float:
        return self._clock() - probe.at

    def load(self, name: str) -> VllmLoad | None:
        """The scraped load, when fresh; None: unknown (never scraped, stale, unreachable)."""
        probe = self._probes.get(name)
        if probe is None or not probe.ok or self.age_s(probe) > self._max_age_s:
            return None
        return probe.load

    async def _run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.interval_s)

    async def probe_all(self) -> None:
        targets = list(self._targets())
        results = await asyncio.gather(*(self._probe(spec, url) for spec, url in targets))
        for (spec, _), probe in zip(targets, results, strict=True):
            self._probes[spec.name] = probe
            if probe.loaded is False and self._on_dropped is not None:
                await self._on_dropped(spec.name, probe.at)

    async def _probe(self, spec: ModelSpec, base_url: str) -> Probe:
        if spec.kind is DeploymentKind.OLLAMA:
            return await self._probe_ollama(spec, base_url)
        path = "/metrics" if spec.backend == "vllm" else "/info"
        body_or_error = await self._get(base_url + path)
        if isinstance(body_or_error, Probe):
            return body_or_error
        body = body_or_error
        try:
            if spec.backend == "vllm":
                return Probe(self._clock(), True, load=parse_metrics(body.decode()))
            model_id = orjson.loads(body).get("model_id")
        except (ValueError, AttributeError) as exc:
            return Probe(
                self._clock(), False, error=safe_url(f"{base_url}{path}: unreadable ({exc})")
            )
        return Probe(self._clock(), True, model_id=str(model_id) if model_id else None)

    async def _probe_ollama(self, spec: ModelSpec, base_url: str) -> Probe:
        tags = await self._get(base_url + "/api/tags")
        ps = tags if isinstance(tags, Probe) else await self._get(base_url + "/api/ps")
        if isinstance(ps, Probe):
            return ps
        assert isinstance(tags, bytes)
        name = spec.upstream_model
        try:
            present = _ollama_entry(orjson.loads(tags), name) is not None
            running = _ollama_entry(orjson.loads(ps), name)
        except (ValueError, AttributeError, TypeError) as exc:
            return Probe(
                self._clock(), False, error=safe_url(f"{base_url}: unreadable answer ({exc})")
            )
        if not present:
            error = (
                f"model {name!r} is not in Ollama at {safe_url(base_url)}; pull it (POST /api/pull)"
            )
            return Probe(self._clock(), False, error=error, loaded=False)
        vram = running.get("size_vram") if running else None
        return Probe(
            self._clock(),
            True,
            model_id=name,
            loaded=running is not None,
            vram_bytes=vram if isinstance(vram, int) else None,
        )

    async def _get(self, url: str) -> bytes | Probe:
        """The body of a 200 answer, or the failed probe saying why there is none."""
        try:
            async with asyncio.timeout(max(1.0, self.interval_s)):
                status, body = await self._upstream.get_json_bytes(url)
        except TimeoutError:
            return Probe(self._clock(), False, error=f"{safe_url(url)} did not answer in time")
        except EngineError as exc:
            return Probe(self._clock(), False, error=exc.message)
        if status != 200:
            return Probe(self._clock(), False, error=f"{safe_url(url)} answered {status}")
        return body


def _ollama_entry(listing: dict[str, object], name: str) -> dict[str, object] | None:
    """The entry for `name` in an Ollama `{"models": [...]}` listing (`x` is `x:latest`)."""
    wanted = {name, name if ":" in name else f"{name}:latest"}
    models = listing.get("models") or []
    assert isinstance(models, list)
    for entry in models:
        if isinstance(entry, dict) and (
            entry.get("name") in wanted or entry.get("model") in wanted
        ):
            return entry
    return None
