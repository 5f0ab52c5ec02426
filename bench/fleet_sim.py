"""Trace-driven fleet simulator: where models go across N models x M nodes, under four policies.

    python bench/fleet_sim.py [--requests 4000] [--rate 0.5] [--seed 1] [--ctx 16384]
                              [--parallel 4] [--load-gib-s 2] [--start-s 3] [--json]

Policies (every one routes a request to the node where its model is already loaded first):
- `ml-offload`: byte-aware placement, `placement.place_on_fleet` (the gateway's own pure code)
  fed with every node's devices: most layers on GPUs, fewest bytes evicted, best fit.
- `ollama`: Ollama's scheduler on each node (a memory check with LRU eviction and its cap of
  3 loaded models per GPU, `OLLAMA_MAX_LOADED_MODELS`), modelled with the same `place` on one
  node; a cold model goes to the node with the fewest loaded models (a count-aware balancer).
- `count-lru`: llama.cpp's router (`--models-max 4`): a count cap with LRU eviction and no
  memory check; a load that does not fit fails when llama.cpp allocates its buffers (an OOM,
  costing a process start), the next LRU model is unloaded and the load retried.
- `static`: llama-swap's groups, written once by hand: models in order of expected popularity,
  each a group of its own on the node where it fits best (always loaded once used); a model that
  fits nowhere joins the smallest group whose node has room for it once that group is unloaded;
  a group's members swap (one loaded at a time, `swap: true`).

The model: requests are taken in arrival order and each decision is committed at arrival. A
model is busy from its load until its last request ends; no policy unloads a busy model (they
wait). A node loads one model at a time. A load takes `start-s` plus the file's bytes at
`load-gib-s` (assumed figures, not measurements). A request keeps its model busy for its
service time, longer in proportion to the layers left on the CPU (x10 per layer, assumed).
Wait = arrival to the model being ready; latency = wait + service (queueing for slots is not
modelled).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fleet_traces as ft

from ml_offload.placement import (
    DeviceRoom,
    LoadedView,
    NodeView,
    Placement,
    place,
    place_on_fleet,
)
from ml_offload.vram import MemoryEstimate

RESERVE_BYTES = 512 * 2**20  # per device, the gateway's default reserve
CPU_SLOWDOWN = 10.0  # a layer on the CPU takes this many times as long as on a GPU (assumed)
UNLIMITED = 10**6


@dataclass(frozen=True)
class Model:
    name: str
    est: MemoryEstimate
    file_bytes: int


@dataclass
class Resident:
    model: str
    placement: Placement
    ready_at: float
    busy_until: float
    last_used: float


@dataclass
class Node:
    spec: ft.NodeSpec
    resident: dict[str, Resident] = field(default_factory=dict)
    loader_free_at: float = 0.0

    def rooms(self) -> list[DeviceRoom]:
        used = [0] * len(self.spec.device_bytes)
        for r in self.resident.values():
            for i, n in r.placement.device_bytes:
                used[i] += n
        return [DeviceRoom(i, cap - used[i]) for i, cap in enumerate(self.spec.device_bytes)]

    def host_free(self) -> int:
        return self.spec.host_bytes - sum(r.placement.host_bytes for r in self.resident.values())

    def views(self, now: float) -> list[LoadedView]:
        return [
            LoadedView(
                r.model,
                r.placement.host_bytes,
                r.busy_until > now,
                False,
                r.last_used,
                0.0,
                r.placement.device_bytes,
            )
            for r in self.resident.values()
        ]

    def idle_lru(self, now: float) -> list[Resident]:
        idle = [r for r in self.resident.values() if r.busy_until <= now]
        return sorted(idle, key=lambda r: r.last_used)

    def busy_until(self, now: float) -> float | None:
        ends = [r.busy_until for r in self.resident.values() if r.busy_until > now]
        return min(ends) if ends else None


@dataclass(frozen=True)
class Load:
    node: str
    placement: Placement
    failed_s: float = 0.0  # load time lost to failed starts (OOM) before this one
    ooms: int = 0


@dataclass(frozen=True)
class Wait:
    until: float


@dataclass(frozen=True)
class Config:
    load_gib_s: float = 2.0
    start_s: float = 3.0

    def load_s(self, model: Model) -> float:
        return self.start_s + model.file_bytes / 2**30 / self.load_gib_s


class Policy(Protocol):
    name: str

    def decide(self, nodes: list[Node], model: Model, now: float, cfg: Config) -> Load | Wait: ...


def _wait(nodes: list[Node], now: float, model: Model) -> Wait:
    ends = [t for n in nodes if (t := n.busy_until(now)) is not None]
    if not ends:
        raise RuntimeError(f"{model.name} fits on no node, even with nothing else loaded")
    return Wait(min(ends))


class ByteAware:
    name = "ml-offload"

    def decide(self, nodes: list[Node], model: Model, now: float, cfg: Config) -> Load | Wait:
        views = [
            NodeView(n.spec.name, tuple(n.rooms()), tuple(n.views(now)), n.host_free(), UNLIMITED)
            for n in nodes
        ]
        chosen = place_on_fleet(model.est, views, reserve_bytes=RESERVE_BYTES)
        if chosen.node is None:
            return _wait(nodes, now, model)
        return Load(chosen.node, chosen.placement)


class Ollama:
    name = "ollama"

    def decide(self, nodes: list[Node], model: Model, now: float, cfg: Config) -> Load | Wait:
        for n in sorted(nodes, key=lambda n: len(n.resident)):
            plan = place(
                model.est,
                n.rooms(),
                n.views(now),
                reserve_bytes=RESERVE_BYTES,
                host_free_bytes=n.host_free(),
                max_loaded=3 * len(n.spec.device_bytes),
            )
            if not plan.refused:
                return Load(n.spec.name, plan)
        return _wait(nodes, now, model)


class CountLru:
    name = "count-lru"

    def __init__(self, max_models: int = 4) -> None:
        self.max_models = max_models

    def decide(self, nodes: list[Node], model: Model, now: float, cfg: Config) -> Load | Wait:
        for n in sorted(nodes, key=lambda n: len(n.resident)):
            victims = n.idle_lru(now)
            must = max(0, len(n.resident) - self.max_models + 1)
            if must <= len(victims):
                return self._load(n, model, victims, must, now, cfg)
        return _wait(nodes, now, model)

    def _load(
        self, n: Node, model: Model, victims: list[Resident], k: int, now: float, cfg: Config
    ) -> Load | Wait:
        ooms = 0
        while True:
            out = victims[:k]
            rooms = _rooms_without(n, out)
            plan = place(
                model.est,
                rooms,
                [],
                reserve_bytes=RESERVE_BYTES,
                host_free_bytes=UNLIMITED * 2**30,
                max_loaded=1,
            )
            fits = plan.gpu_layers == model.est.layers
            if fits or len(out) == len(n.resident):  # alone on the node: fixed -ngl, partial
                evict = tuple(r.model for r in out)
                return Load(n.spec.name, _with_evict(plan, evict), ooms * cfg.start_s, ooms)
            ooms += 1
            if k == len(victims):  # the models in the way are busy: fail now, retry later
                return Wait(n.busy_until(now) or now)
            k += 1


class Static:
    name = "static"

    def __init__(self, models: list[Model], specs: tuple[ft.NodeSpec, ...]) -> None:
        """Models in order of expected popularity, each a group of its own (always loaded once
        used) on the node it fits best; one that fits nowhere joins the smallest group whose
        node has room for it once that group is unloaded: they swap."""
        room = {s.name: sum(s.device_bytes) - RESERVE_BYTES * len(s.device_bytes) for s in specs}
        self.group: dict[str, tuple[str, str]] = {}  # model -> (node, the group's first model)
        heads: dict[tuple[str, str], int] = {}  # group -> its largest member's bytes
        for m in models:
            need = m.est.full_offload_bytes()
            fits = [s for s in room if room[s] >= need]
            if fits or not heads:
                node = min(fits, key=room.__getitem__) if fits else max(room, key=room.__getitem__)
                room[node] -= need
                self.group[m.name] = heads_key = (node, m.name)
                heads[heads_key] = need
                continue
            swapped = {g: room[g[0]] + heads[g] for g in heads}  # room with the group out
            fit = [g for g in heads if swapped[g] >= need]
            home = min(fit, key=heads.__getitem__) if fit else max(heads, key=swapped.__getitem__)
            self.group[m.name] = home
            room[home[0]] -= max(0, need - heads[home])
            heads[home] = max(heads[home], need)

    def decide(self, nodes: list[Node], model: Model, now: float, cfg: Config) -> Load | Wait:
        home = self.group[model.name]
        n = next(n for n in nodes if n.spec.name == home[0])
        others = [r for r in n.resident.values() if self.group[r.model] == home]
        if any(r.busy_until > now for r in others):
            return Wait(max(r.busy_until for r in others))
        plan = place(
            model.est,
            _rooms_without(n, others),
            [],
            reserve_bytes=RESERVE_BYTES,
            host_free_bytes=n.host_free() + sum(r.placement.host_bytes for r in others),
            max_loaded=1,
        )
        return Load(n.spec.name, _with_evict(plan, tuple(r.model for r in others)))


def _rooms_without(n: Node, out: list[Resident]) -> list[DeviceRoom]:
    freed = [0] * len(n.spec.device_bytes)
    for r in out:
        for i, b in r.placement.device_bytes:
            freed[i] += b
    return [DeviceRoom(r.index, r.free_bytes + freed[r.index]) for r in n.rooms()]


def _with_evict(plan: Placement, evict: tuple[str, ...]) -> Placement:
    return Placement(
        evict,
        plan.gpu_layers,
        plan.layers_per_device,
        plan.device_bytes,
        plan.host_bytes,
        plan.refused,
        plan.wait,
    )


@dataclass
class Stats:
    policy: str
    requests: int = 0
    hits: int = 0  # the model was ready when the request arrived
    loads: int = 0  # cold starts
    evictions: int = 0
    ooms: int = 0
    partial: int = 0  # loads with layers left on the CPU
    gib_loaded: float = 0.0
    waits: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def row(self) -> dict[str, object]:
        waits = sorted(self.waits)
        return {
            "policy": self.policy,
            "loads": self.loads,
            "hit_rate": self.hits / self.requests if self.requests else 0.0,
            "p50_wait_s": _pct(waits, 50),
            "p95_wait_s": _pct(waits, 95),
            "mean_wait_s": statistics.fmean(waits) if waits else 0.0,
            "p95_latency_s": _pct(sorted(self.latencies), 95),
            "evictions": self.evictions,
            "ooms": self.ooms,
            "partial": self.partial,
            "gib_loaded": self.gib_loaded,
        }


def _pct(sorted_values: list[float], p: int) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def simulate(
    trace: list[ft.Request],
    models: dict[str, Model],
    specs: tuple[ft.NodeSpec, ...],
    policy: Policy,
    cfg: Config,
) -> Stats:
    nodes = [Node(s) for s in specs]
    stats = Stats(policy.name)
    for req in trace:
        model = models[req.model]
        res = next((n.resident[req.model] for n in nodes if req.model in n.resident), None)
        if res is None:
            res = _cold(nodes, model, req.t, policy, cfg, stats)
        elif res.ready_at <= req.t:
            stats.hits += 1
        start = max(req.t, res.ready_at)
        cpu_share = 1 - res.placement.gpu_layers / model.est.layers
        end = start + req.service_s * (1 + (CPU_SLOWDOWN - 1) * cpu_share)
        res.busy_until = max(res.busy_until, end)
        res.last_used = max(res.last_used, end)
        stats.requests += 1
        stats.waits.append(start - req.t)
        stats.latencies.append(end - req.t)
    return stats


def _cold(
    nodes: list[Node], model: Model, now: float, policy: Policy, cfg: Config, stats: Stats
) -> Resident:
    while isinstance(decision := policy.decide(nodes, model, now, cfg), Wait):
        now = decision.until
    node = next(n for n in nodes if n.spec.name == decision.node)
    for name in decision.placement.evict:
        del node.resident[name]
    begin = max(now, node.loader_free_at) + decision.failed_s
    ready = begin + cfg.load_s(model)
    node.loader_free_at = ready
    res = Resident(model.name, decision.placement, ready, ready, ready)
    node.resident[model.name] = res
    stats.loads += 1
    stats.evictions += len(decision.placement.evict)
    stats.ooms += decision.ooms
    stats.partial += decision.placement.gpu_layers < model.est.layers
    stats.gib_loaded += model.file_bytes / 2**30 * (1 + decision.ooms)
    return res


def policies(models: list[Model], specs: tuple[ft.NodeSpec, ...]) -> list[Policy]:
    return [ByteAware(), Ollama(), CountLru(), Static(models, specs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--rate", type=float, default=0.5, help="mean requests per second")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=16384, help="context tokens per model (all slots)")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--load-gib-s", type=float, default=2.0)
    ap.add_argument("--start-s", type=float, default=3.0)
    ap.add_argument("--traces", default=",".join(ft.TRACES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = Config(args.load_gib_s, args.start_s)
    models = [
        Model(s.name, s.estimate(args.ctx, args.parallel), s.info().file_size_bytes)
        for s in ft.MODELS
    ]
    by_name = {m.name: m for m in models}
    rows = []
    for trace_name in args.traces.split(","):
        trace = ft.TRACES[trace_name](
            list(by_name), args.requests, random.Random(args.seed), args.rate
        )
        for policy in policies(models, ft.FLEET):
            row = simulate(trace, by_name, ft.FLEET, policy, cfg).row()
            rows.append({"trace": trace_name, **row})
    if args.json:
        print(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        return
    _print_setup(models, args)
    _print_table(rows)


def _print_setup(models: list[Model], args: argparse.Namespace) -> None:
    fleet = ", ".join(
        f"{s.name} {'+'.join(str(d // 2**30) for d in s.device_bytes)} GiB" for s in ft.FLEET
    )
    print(f"fleet: {fleet}")
    sizes = ", ".join(f"{m.name} {m.est.full_offload_bytes() / 2**30:.1f}" for m in models)
    print(f"models (GiB on GPU, ctx {args.ctx}, {args.parallel} slots): {sizes}")
    print(
        f"{args.requests} requests per trace at {args.rate}/s, seed {args.seed}; load = "
        f"{args.start_s} s + file bytes at {args.load_gib_s} GiB/s\n"
    )


def _print_table(rows: list[dict[str, object]]) -> None:
    head = "| trace | policy | cold starts | hit rate | p50 wait s | p95 wait s | mean wait s "
    print(head + "| p95 latency s | evictions | OOM | partial | GiB loaded |")
    print("|" + " --- |" * 12)
    for r in rows:
        print(
            f"| {r['trace']} | {r['policy']} | {r['loads']} | {r['hit_rate']:.1%} "
            f"| {r['p50_wait_s']:.1f} | {r['p95_wait_s']:.1f} | {r['mean_wait_s']:.1f} "
            f"| {r['p95_latency_s']:.1f} "
            f"| {r['evictions']} | {r['ooms']} | {r['partial']} | {r['gib_loaded']:.0f} |"
        )


if __name__ == "__main__":
    main()
