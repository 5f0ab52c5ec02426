"""Pure scheduling decisions: where a model goes, what to evict for it, what is idle.

No I/O and no clocks: the scheduler passes in views of devices, loaded models and the time.

Order of preference for a model that needs memory:
1. every layer on one GPU (the one with most room), or split across GPUs, without evicting;
2. the same after evicting idle, unpinned models, least recently used first (an idle model
   costs only a reload, while running a model mostly on the CPU makes every request slow);
3. the largest number of layers that fit (partial offload), the rest in host memory;
4. everything in host memory (machines without a GPU);
5. refuse, with the reason, and `wait` only when busy models could free the room by finishing
   (a model that fits nowhere even with every other model unloaded is refused at once).
Nothing is ever placed past a device's free memory minus the reserve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Estimate(Protocol):
    """A model's memory the way llama.cpp offloads it (see vram.MemoryEstimate)."""

    @property
    def layers(self) -> int:
        """What `n_gpu_layers` counts: every block plus the output head."""
        ...

    @property
    def layer_bytes(self) -> tuple[int, ...]: ...

    @property
    def output_bytes(self) -> int: ...

    @property
    def gpu_compute_bytes(self) -> int: ...

    @property
    def cpu_bytes(self) -> int: ...

    @property
    def context_bytes(self) -> int:
        """On each GPU used: the backend's own context (`gpu.context_overhead_bytes`)."""
        ...

    @property
    def companion_bytes(self) -> int:
        """A projector and a draft model loaded beside it (counted on each GPU used)."""
        ...

    def cpu_total_bytes(self) -> int: ...

    def host_bytes(self, n_layers: int) -> int:
        """Host memory with `n_layers` offloaded."""
        ...


@dataclass(frozen=True, slots=True)
class LoadedView:
    name: str
    host_bytes: int
    busy: bool  # requests in flight or queued
    pinned: bool
    last_used: float  # monotonic seconds
    ttl_s: float
    device_bytes: tuple[tuple[int, int], ...] = ()  # (device index, bytes)


@dataclass(frozen=True, slots=True)
class DeviceRoom:
    index: int
    free_bytes: int  # free for planning: live free memory less what loading models will take


@dataclass(frozen=True, slots=True)
class Placement:
    evict: tuple[str, ...] = ()
    gpu_layers: int = 0
    layers_per_device: tuple[tuple[int, int], ...] = ()  # (device index, layers)
    device_bytes: tuple[tuple[int, int], ...] = ()  # (device index, bytes)
    host_bytes: int = 0
    refused: str | None = None
    wait: bool = False

    @property
    def kind(self) -> str:
        if self.refused:
            return "refused"
        if not self.gpu_layers:
            return "cpu"
        return "split" if len(self.device_bytes) > 1 else "gpu"


@dataclass(slots=True)
class _Fit:
    layers: dict[int, int] = field(default_factory=dict)
    used: dict[int, int] = field(default_factory=dict)


def fit_layers(
    est: Estimate,
    rooms: list[DeviceRoom],
    n_layers: int,
    reserve_bytes: int,
    gpu_factor: float = 1.0,
) -> _Fit | None:
    """Spread `n_layers` offloaded layers over the devices, most room first, None if they do
    not fit. llama.cpp offloads from the end: the output head first, then blocks from the last
    one, in index order across devices (so the head sits on the last device used); each device
    used pays a compute buffer, the backend's context and the companions (mmproj, draft)."""
    blocks = est.layer_bytes[len(est.layer_bytes) - (n_layers - 1) :] if n_layers > 1 else ()
    todo = [int(b * gpu_factor) for b in (*blocks, est.output_bytes)]
    compute = int((est.gpu_compute_bytes + est.companion_bytes) * gpu_factor) + est.context_bytes
    fit = _Fit()
    for room in sorted(rooms, key=lambda r: -r.free_bytes):
        if not todo:
            break
        left = room.free_bytes - reserve_bytes - compute
        taken = 0
        while todo and todo[0] <= left:
            left -= todo.pop(0)
            taken += 1
        if taken:
            fit.layers[room.index] = taken
            fit.used[room.index] = room.free_bytes - reserve_bytes - left
    return None if todo else fit


def host_bytes(est: Estimate, n_layers: int) -> int:
    """Host memory with `n_layers` offloaded: the blocks not offloaded stay on the CPU."""
    return est.host_bytes(n_layers)


def place(
    est: Estimate,
    rooms: list[DeviceRoom],
    loaded: list[LoadedView],
    *,
    reserve_bytes: int,
    host_free_bytes: int,
    max_loaded: int,
    max_gpu_layers: int | None = None,
    gpu_factor: float = 1.0,
) -> Placement:
    """Decide where a model goes (see the module docstring for the order)."""
    limit = est.layers if max_gpu_layers is None else min(est.layers, max(0, max_gpu_layers))
    victims = sorted((m for m in loaded if not m.busy and not m.pinned), key=lambda m: m.last_used)
    must = max(0, len(loaded) - max_loaded + 1)  # evictions the cap alone requires
    options = range(must, len(victims) + 1)

    def attempt(out: list[LoadedView], layers: range) -> Placement | None:
        free_rooms = _rooms_after(rooms, out)
        host_free = host_free_bytes + sum(m.host_bytes for m in out)
        for n in layers:
            fit = fit_layers(est, free_rooms, n, reserve_bytes, gpu_factor) if n else _Fit()
            if fit is not None and host_bytes(est, n) <= host_free:
                return Placement(
                    evict=tuple(m.name for m in out),
                    gpu_layers=n,
                    layers_per_device=tuple(sorted(fit.layers.items())),
                    device_bytes=tuple(sorted(fit.used.items())),
                    host_bytes=host_bytes(est, n),
                )
        return None

    if rooms and limit:
        for k in options:  # everything allowed on the GPUs, fewest evictions first
            if (plan := attempt(victims[:k], range(limit, limit + 1))) is not None:
                return plan
    start = max(limit - 1, 0) if rooms else 0
    for k in options:  # partial offload, then host memory only
        if (plan := attempt(victims[:k], range(start, -1, -1))) is not None:
            return plan
    every = range(limit if rooms else 0, -1, -1)
    unpinned = [m for m in loaded if not m.pinned]
    pinned = Placement(refused="the loaded models are pinned and leave no room")
    if must > len(unpinned):
        return pinned
    if any(m.busy for m in unpinned) and attempt(unpinned, every) is not None:
        return Placement(refused="the loaded models that could make room are busy", wait=True)
    if attempt(loaded, every) is not None:
        return pinned
    return Placement(  # not even with every other model unloaded: waiting cannot help
        refused=f"needs {_gib(host_bytes(est, 0))} in host memory (or GPU room for its layers) "
        f"but only {_gib(host_free_bytes + sum(m.host_bytes for m in loaded))} is free with "
        f"every other model unloaded (scheduler.memory_budget_bytes, or a GPU)"
    )


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node of a fleet as placement sees it: its devices, models and host memory."""

    name: str
    rooms: tuple[DeviceRoom, ...]
    loaded: tuple[LoadedView, ...]
    host_free_bytes: int
    max_loaded: int


@dataclass(frozen=True, slots=True)
class NodePlacement:
    node: str | None  # None: refused on every node (see `placement.refused` and `.wait`)
    placement: Placement


def place_on_fleet(
    est: Estimate,
    nodes: list[NodeView],
    *,
    reserve_bytes: int,
    max_gpu_layers: int | None = None,
    gpu_factor: float = 1.0,
) -> NodePlacement:
    """Where a model that is warm nowhere goes: `place` on every node, then the node where the
    most layers go on GPUs, evicting the fewest bytes, leaving the least room unused on the
    devices it takes (best fit keeps large rooms for large models); ties by node order."""
    best: tuple[tuple[int, int, int], NodeView, Placement] | None = None
    refusals: list[Placement] = []
    for node in nodes:
        plan = place(
            est,
            list(node.rooms),
            list(node.loaded),
            reserve_bytes=reserve_bytes,
            host_free_bytes=node.host_free_bytes,
            max_loaded=node.max_loaded,
            max_gpu_layers=max_gpu_layers,
            gpu_factor=gpu_factor,
        )
        if plan.refused:
            refusals.append(plan)
            continue
        rank = (-plan.gpu_layers, _evicted_bytes(node, plan.evict), _leftover(node, plan))
        if best is None or rank < best[0]:
            best = (rank, node, plan)
    if best is not None:
        return NodePlacement(best[1].name, best[2])
    wait = any(p.wait for p in refusals)
    reason = refusals[0].refused if len(refusals) == 1 else "no node can make room"
    return NodePlacement(None, Placement(refused=reason or "no nodes", wait=wait))


def _evicted_bytes(node: NodeView, evict: tuple[str, ...]) -> int:
    return sum(sum(n for _, n in m.device_bytes) for m in node.loaded if m.name in evict)


def _leftover(node: NodeView, plan: Placement) -> int:
    """Room left on the devices the model takes, after the evictions and the model itself."""
    rooms = {r.index: r.free_bytes for r in _rooms_after(list(node.rooms), _out(node, plan))}
    return sum(rooms[i] - used for i, used in plan.device_bytes)


def _out(node: NodeView, plan: Placement) -> list[LoadedView]:
    return [m for m in node.loaded if m.name in plan.evict]


def _rooms_after(rooms: list[DeviceRoom], evicted: list[LoadedView]) -> list[DeviceRoom]:
    freed: dict[int, int] = {}
    for m in evicted:
        for index, n in m.device_bytes:
            freed[index] = freed.get(index, 0) + n
    return [DeviceRoom(r.index, r.free_bytes + freed.get(r.index, 0)) for r in rooms]


def cap_victim(loaded: list[LoadedView], max_loaded: int) -> str | None:
    """For a model that takes no memory we place (one held by Ollama) but counts toward
    `max_loaded`: None when there is room under the cap, else the least recently used idle,
    unpinned model to unload first, or "" when every loaded model is busy or pinned."""
    if len(loaded) < max_loaded:
        return None
    victims = sorted((m for m in loaded if not m.busy and not m.pinned), key=lambda m: m.last_used)
    return victims[0].name if victims else ""


def idle_expired(loaded: list[LoadedView], now: float) -> list[str]:
    """Models whose idle time passed their TTL (TTL 0 means never), oldest first."""
    expired = [
        m
        for m in loaded
        if m.ttl_s > 0 and not m.busy and not m.pinned and now - m.last_used >= m.ttl_s
    ]
    return [m.name for m in sorted(expired, key=lambda m: m.last_used)]


def tensor_split(layers_per_device: tuple[tuple[int, int], ...], n_devices: int) -> list[float]:
    """llama.cpp's `tensor_split`: the share of offloaded layers for each device index."""
    total = sum(n for _, n in layers_per_device) or 1
    shares = dict(layers_per_device)
    return [shares.get(i, 0) / total for i in range(n_devices)]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
