"""What changes which models are loaded or known, for every entry point.

The native API, Ollama's load/unload idiom, `/api/pull`, the MCP tools and the dashboard all ask
this one service; the routes only parse their dialect, check the caller (the guard) and render.
`rescan` (`POST /models/rescan`, `mlo models rescan`, after `mlo pull`, and `FolderWatch` on
changes to the model folder) finds new models without a restart and leaves loaded ones alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchfiles import Change, awatch

from ml_offload.backends import ollama
from ml_offload.backends.http import Upstream
from ml_offload.config import Settings
from ml_offload.domain import ModelSpec, ModelState, ModelStatus
from ml_offload.errors import InvalidRequest, MloError, Unavailable
from ml_offload.gguf import split_shard
from ml_offload.registry import Changes, ModelRegistry, unavailable_reason
from ml_offload.scheduler import Scheduler

log = logging.getLogger(__name__)


class ModelControl:
    """Load, unload, pin and pull, by model spec (names are resolved by the caller's dialect)."""

    def __init__(self, registry: ModelRegistry, scheduler: Scheduler, upstream: Upstream) -> None:
        self._registry, self._scheduler, self._upstream = registry, scheduler, upstream

    async def load(self, spec: ModelSpec, *, pin: bool | None = None) -> ModelStatus:
        reason = unavailable_reason(spec)
        running = spec.holds_memory and self._scheduler.status([spec])[0].state is ModelState.READY
        if reason is not None and not running:
            raise Unavailable(f"model {spec.name!r} is unavailable: {reason}")
        return await self._scheduler.load(spec, pin=pin)

    async def unload(self, spec: ModelSpec) -> ModelStatus:
        """Unload a loaded model; raises NotFound when it is not loaded."""
        return await self._scheduler.unload(spec.name)

    async def unload_if_loaded(self, spec: ModelSpec) -> bool:
        """Unload when loaded (Ollama's `keep_alive: 0` is idempotent); True if it was."""
        if not spec.holds_memory:
            return False
        if self._scheduler.status([spec])[0].state is ModelState.STOPPED:
            return False
        await self._scheduler.unload(spec.name)
        return True

    async def delete(self, spec: ModelSpec) -> list[Path]:
        """Ollama's delete, for files the gateway manages: unload the model, delete its file(s)
        from the model folder, rescan. Config, demo and remote models are refused."""
        if spec.source != "scan" or spec.path is None:
            raise InvalidRequest(
                f"model {spec.name!r} is not a file in the model folder (it comes from "
                f"{spec.source}); remove it from the config instead",
                param="model",
            )
        await self.unload_if_loaded(spec)
        files = _model_files(spec.path)
        for path in files:
            path.unlink(missing_ok=True)
        await self._registry.refresh()
        return files

    async def copy(self, source: ModelSpec, destination: str) -> None:
        await self._registry.copy(source.name, destination)

    async def reload(self, settings: Settings) -> list[str]:
        """A config reload (SIGHUP): models and the folder rescanned; a model that changed or
        went is unloaded, the others stay loaded. Returns the names unloaded."""
        changed = await self._registry.reload(settings)
        for name in changed:
            await self._scheduler.forget(name)
        log.info(
            "config reloaded: %d models; changed or removed: %s",
            len(self._registry.all()),
            ", ".join(changed) or "none",
        )
        return changed

    async def unload_all(self) -> list[str]:
        return await self._scheduler.unload_all()

    def pin(self, spec: ModelSpec, pinned: bool) -> ModelStatus:
        return self._scheduler.set_pinned(spec, pinned)

    async def pull(
        self, name: str, spec: ModelSpec | None, body: dict[str, Any]
    ) -> bytes | ollama.PullProgress:
        """Pull `name` on the Ollama server behind `spec` (or the one configured): its JSON
        answer, or its NDJSON progress to stream back."""
        base_url, remote = ollama.pull_target(self._registry.all(), spec, name)
        return await ollama.pull(self._upstream, base_url, remote, body)

    async def rescan(self) -> Changes:
        """Read the model folder and config again: new models are served at once, loaded
        ones stay loaded; a model whose file or definition changed, or that went, is
        unloaded (as a config reload does) and starts afresh on its next request."""
        changes = await self._registry.refresh()
        for name in (*changes.removed, *changes.changed):
            await self._scheduler.forget(name)
        return changes


class FolderWatch:
    """Rescans when GGUF files (or folders) appear, change or go under the model folder;
    watchfiles groups a burst of changes (a file being copied) into one rescan."""

    def __init__(self, control: ModelControl, folder: Path) -> None:
        self._control, self._folder = control, folder.absolute()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("model folder %s not watched: %s", self._folder, exc.strerror or exc)
            return
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        keep = _models_only(self._folder)
        try:
            async for _ in awatch(self._folder, watch_filter=keep, stop_event=self._stop):
                try:
                    await self._control.rescan()
                except MloError as exc:  # keep watching; the next change tries again
                    log.warning("model folder rescan failed: %s", exc.message)
        except (OSError, RuntimeError) as exc:  # the folder went, or the watcher failed
            log.warning(
                "model folder %s no longer watched (%s); use `mlo models rescan`", self._folder, exc
            )


def _models_only(folder: Path) -> Callable[[Change, str], bool]:
    """GGUF files and folders (a folder moved in) under `folder`, not in hidden folders (the
    downloads in `.cache/`)."""

    def keep(change: Change, path: str) -> bool:
        p = Path(path)
        with contextlib.suppress(ValueError):
            p = p.relative_to(folder)
        if any(part.startswith(".") for part in p.parts):
            return False
        return p.suffix.lower() == ".gguf" or not p.suffix

    return keep


def _model_files(path: Path) -> list[Path]:
    """A model's file, or every shard of a split model (`-00001-of-00003`)."""
    shard = split_shard(path)
    if shard is None:
        return [path]
    n = shard[1]
    stem = path.stem[: -len("-00001-of-00000")]
    return [path.with_name(f"{stem}-{i:05d}-of-{n:05d}{path.suffix}") for i in range(1, n + 1)]
