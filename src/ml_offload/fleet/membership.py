"""Heartbeats: a node (`fleet.role = node`) rewrites its row in `nodes` every `heartbeat_s`
with its devices, free memory, loaded models and queue depth; anyone reading the table shows a
node whose lease (`lease_s` after its latest beat) has passed as gone.

The heartbeat is built by the composition root from the status views (`snapshot`); this module
only times, writes and reads. A failed write (the database away) is logged and retried at the
next beat: the node keeps serving, and shows gone elsewhere once its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict

from ml_offload.domain import (
    DeploymentKind,
    ModelSpec,
    ModelState,
    NodeBeat,
    NodeDevice,
    ServedModel,
    leaves_machine,
)
from ml_offload.errors import MloError
from ml_offload.storage.nodes_repo import NodeRepository
from ml_offload.wire.native import FleetNodeView, FleetView, MemoryView, ModelList, NodeDeviceView

log = logging.getLogger(__name__)
_HELD = (ModelState.READY, ModelState.STARTING)

Snapshot = Callable[[], tuple[MemoryView, ModelList]]


def served_here(specs: list[ModelSpec]) -> list[ModelSpec]:
    """What a node offers the fleet: what runs on its host (its engines, a managed vLLM, its
    own Ollama's models, a server it reaches on loopback). A server elsewhere or a cloud model
    configured on it is left out: a gateway reaches those itself, and a node forwards nothing."""
    return [spec for spec in specs if spec.holds_memory or _on_loopback(spec)]


def _on_loopback(spec: ModelSpec) -> bool:
    return spec.kind is DeploymentKind.REMOTE and not leaves_machine(spec.url)


def node_beat(
    name: str,
    role: str,
    memory: MemoryView,
    models: ModelList,
    *,
    started_at: float,
    now: float,
    lease_s: float,
    url: str | None = None,
) -> NodeBeat:
    """A heartbeat from the status views of /vram/status and /models; `url`: where gateways
    reach this node."""
    return NodeBeat(
        name=name,
        role=role,
        devices=tuple(
            NodeDevice(d.index, d.name, d.total_bytes, d.free_bytes) for d in memory.devices
        ),
        loaded=tuple(m.id for m in models.data if m.state in _HELD),
        host_free_bytes=max(0, memory.cpu.left_bytes),
        queue_depth=sum(m.in_flight + m.queued for m in models.data),
        started_at=started_at,
        beat_at=now,
        lease_s=lease_s,
        url=url,
        served=tuple(ServedModel(m.id, tuple(m.aliases), m.estimate_bytes) for m in models.data),
    )


def fleet_view(beats: list[NodeBeat], now: float) -> FleetView:
    return FleetView(data=[_node_view(b, now) for b in beats])


def _node_view(b: NodeBeat, now: float) -> FleetNodeView:
    return FleetNodeView(
        name=b.name,
        role=b.role,
        alive=b.alive(now),
        devices=[NodeDeviceView(**asdict(d)) for d in b.devices],
        loaded=list(b.loaded),
        host_free_bytes=b.host_free_bytes,
        queue_depth=b.queue_depth,
        started_at=b.started_at,
        beat_age_s=max(0.0, now - b.beat_at),
        lease_s=b.lease_s,
        url=b.url,
        models=[m.name for m in b.served],
    )


class Membership:
    """This process in the fleet: publishes heartbeats when it is a node; reads the fleet."""

    def __init__(
        self,
        repo: NodeRepository,
        *,
        name: str,
        role: str,
        heartbeat_s: float,
        lease_s: float,
        snapshot: Snapshot,
        url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo, self.name, self.role, self.url = repo, name, role, url
        self.heartbeat_s, self.lease_s = heartbeat_s, lease_s
        self._snapshot, self._clock = snapshot, clock
        self.started_at = clock()
        self._task: asyncio.Task[None] | None = None

    @property
    def publishes(self) -> bool:
        return self.role == "node"

    async def start(self) -> None:
        if self.publishes:
            await self.beat()  # listed before the node answers its first request
            self._task = asyncio.create_task(self._run(), name="fleet-heartbeat")

    async def beat(self) -> None:
        memory, models = self._snapshot()
        beat = node_beat(
            self.name,
            self.role,
            memory,
            models,
            started_at=self.started_at,
            now=self._clock(),
            lease_s=self.lease_s,
            url=self.url,
        )
        await self.repo.beat(beat)

    async def view(self) -> FleetView:
        return fleet_view(await self.repo.all(), self._clock())

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        try:
            await self.repo.leave(self.name, self._clock())
        except MloError as exc:
            log.warning("fleet: could not mark node %s gone: %s", self.name, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.beat()
            except MloError as exc:  # the database away: try again at the next beat
                log.warning("fleet: heartbeat of node %s failed: %s", self.name, exc)
