"""Pure placement and idle decisions, including hypothesis properties over random devices,
models and request traces."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from ml_offload.placement import (
    DeviceRoom,
    LoadedView,
    NodeView,
    Placement,
    fit_layers,
    host_bytes,
    idle_expired,
    place,
    place_on_fleet,
    tensor_split,
)
from ml_offload.vram import MemoryEstimate

MIB = 2**20
GIB = 2**30


def Est(
    layer_bytes: tuple[int, ...],
    output_bytes: int = 50 * MIB,
    gpu_compute_bytes: int = 100 * MIB,
    cpu_bytes: int = 80 * MIB,
) -> MemoryEstimate:
    return MemoryEstimate(layer_bytes, output_bytes, gpu_compute_bytes, cpu_bytes)


def est(blocks: int = 10, block_mib: int = 100) -> MemoryEstimate:
    """`blocks` blocks plus the head: llama.cpp counts `blocks + 1` offloadable layers."""
    return Est((block_mib * MIB,) * blocks)


def view(
    name: str,
    host: int = 0,
    *,
    busy: bool = False,
    pinned: bool = False,
    used: float = 0,
    ttl: float = 300,
    dev: tuple[tuple[int, int], ...] = (),
) -> LoadedView:
    return LoadedView(name, host, busy, pinned, used, ttl, dev)


def go(
    e: Est, rooms: list[DeviceRoom], loaded: list[LoadedView] | None = None, **kw: int
) -> Placement:
    args = {"reserve_bytes": 0, "host_free_bytes": 64 * GIB, "max_loaded": 8, **kw}
    return place(e, rooms, loaded or [], **args)  # type: ignore[arg-type]


def test_one_device_with_most_room() -> None:
    plan = go(est(), [DeviceRoom(0, 2 * GIB), DeviceRoom(1, 4 * GIB)])
    assert plan.kind == "gpu" and plan.gpu_layers == 11 and plan.layers_per_device == ((1, 11),)
    assert dict(plan.device_bytes)[1] == 10 * 100 * MIB + 100 * MIB + 50 * MIB
    assert plan.host_bytes == 80 * MIB and not plan.evict


def test_split_across_devices_when_no_single_one_fits() -> None:
    plan = go(est(), [DeviceRoom(0, 700 * MIB), DeviceRoom(1, 700 * MIB)])
    assert plan.kind == "split" and plan.gpu_layers == 11
    assert plan.layers_per_device == ((0, 6), (1, 5))  # 6 blocks; 4 blocks and the output head
    assert tensor_split(plan.layers_per_device, 2) == [6 / 11, 5 / 11]


def test_reserve_is_respected() -> None:
    need = 10 * 100 * MIB + 150 * MIB
    assert go(est(), [DeviceRoom(0, need)]).kind == "gpu"
    plan = go(est(), [DeviceRoom(0, need)], reserve_bytes=1)
    assert (
        plan.kind == "gpu" and plan.gpu_layers == 10
    )  # one byte short: one block stays on the CPU


def test_evicts_lru_idle_model_for_full_offload_before_partial() -> None:
    rooms = [DeviceRoom(0, 600 * MIB)]
    loaded = [
        view("old", used=1, dev=((0, 800 * MIB),)),
        view("new", used=5, dev=((0, 200 * MIB),)),
    ]
    plan = go(est(), rooms, loaded)
    assert plan.evict == ("old",) and plan.gpu_layers == 11


def test_partial_offload_when_nothing_can_be_evicted() -> None:
    plan = go(est(), [DeviceRoom(0, 600 * MIB)], [view("busy", busy=True, dev=((0, 1 * GIB),))])
    assert plan.kind == "gpu" and plan.gpu_layers == 5 and not plan.evict  # head + 4 blocks
    assert plan.host_bytes == host_bytes(est(), plan.gpu_layers)
    assert dict(plan.device_bytes)[0] <= 600 * MIB


def test_cpu_only_machine_uses_host_memory_budget() -> None:
    e = est()
    assert go(e, []).kind == "cpu" and go(e, []).host_bytes == e.cpu_total_bytes()
    loaded = [view("a", host=GIB, used=1), view("b", host=GIB, used=2)]
    plan = go(e, [], loaded, host_free_bytes=GIB)
    assert plan.evict == ("a",) and plan.kind == "cpu"


def test_cap_on_loaded_models_forces_lru_eviction() -> None:
    loaded = [view("old", used=1), view("new", used=5), view("mid", used=3)]
    assert go(est(), [], loaded, max_loaded=3).evict == ("old",)


def test_pinned_and_busy_are_never_evicted() -> None:
    loaded = [view("p", pinned=True, used=0), view("b", busy=True, used=1), view("i", used=2)]
    assert go(est(), [], loaded, max_loaded=3).evict == ("i",)


def test_waits_when_only_busy_models_could_make_room() -> None:
    plan = go(est(), [], [view("b", busy=True)], max_loaded=1)
    assert plan.refused and plan.wait


def test_refuses_when_pinned_models_fill_the_cap() -> None:
    plan = go(est(), [], [view("p", pinned=True)], max_loaded=1)
    assert plan.refused and "pinned" in plan.refused and not plan.wait


def test_refuses_a_model_too_big_for_gpu_and_host() -> None:
    plan = go(est(), [DeviceRoom(0, 100 * MIB)], host_free_bytes=500 * MIB)
    assert (
        plan.kind == "refused" and plan.refused and "host memory" in plan.refused and not plan.wait
    )


def test_max_gpu_layers_caps_offload() -> None:
    assert go(est(), [DeviceRoom(0, 8 * GIB)], max_gpu_layers=4).gpu_layers == 4
    assert go(est(), [DeviceRoom(0, 8 * GIB)], max_gpu_layers=0).kind == "cpu"


def test_output_head_is_offloaded_first() -> None:
    """llama.cpp's `-ngl 1` puts only the output head on the GPU; each more layer is a block."""
    e = est()
    one = fit_layers(e, [DeviceRoom(0, 8 * GIB)], 1, 0)
    two = fit_layers(e, [DeviceRoom(0, 8 * GIB)], 2, 0)
    assert one is not None and two is not None
    assert one.used[0] == 50 * MIB + 100 * MIB  # head + compute buffer
    assert two.used[0] - one.used[0] == 100 * MIB
    assert host_bytes(e, 1) == 80 * MIB + 1000 * MIB and host_bytes(e, 11) == 80 * MIB


def test_idle_expired_respects_ttl_busy_pins_and_zero_ttl() -> None:
    loaded = [
        view("old", used=0, ttl=10),
        view("fresh", used=95, ttl=10),
        view("busy", used=0, busy=True, ttl=10),
        view("pinned", used=0, pinned=True, ttl=10),
        view("forever", used=0, ttl=0),
    ]
    assert idle_expired(loaded, now=100) == ["old"]


# -- properties ---------------------------------------------------------------------------

estimates = st.builds(
    Est,
    layer_bytes=st.lists(st.integers(1 * MIB, 800 * MIB), min_size=1, max_size=40).map(tuple),
    output_bytes=st.integers(0, 500 * MIB),
    gpu_compute_bytes=st.integers(0, 500 * MIB),
    cpu_bytes=st.integers(0, 500 * MIB),
)
rooms_st = st.lists(st.integers(0, 24 * GIB), max_size=4).map(
    lambda frees: [DeviceRoom(i, f) for i, f in enumerate(frees)]
)
loaded_st = st.lists(
    st.builds(
        LoadedView,
        name=st.uuids().map(str),
        host_bytes=st.integers(0, 8 * GIB),
        busy=st.booleans(),
        pinned=st.booleans(),
        last_used=st.floats(0, 1e6),
        ttl_s=st.floats(0, 1e4),
        device_bytes=st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 8 * GIB)), max_size=3
        ).map(tuple),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    estimates, rooms_st, loaded_st, st.integers(0, GIB), st.integers(0, 64 * GIB), st.integers(1, 6)
)
def test_placement_never_exceeds_free_minus_reserve(
    e: MemoryEstimate,
    rooms: list[DeviceRoom],
    loaded: list[LoadedView],
    reserve: int,
    host_free: int,
    cap: int,
) -> None:
    plan = place(e, rooms, loaded, reserve_bytes=reserve, host_free_bytes=host_free, max_loaded=cap)
    by_name = {m.name: m for m in loaded}
    assert all(not by_name[n].pinned and not by_name[n].busy for n in plan.evict)
    if plan.refused is not None:
        assert plan.gpu_layers == 0 and not plan.device_bytes
        return
    evicted = [by_name[n] for n in plan.evict]
    freed: dict[int, int] = {}
    for m in evicted:
        for i, b in m.device_bytes:
            freed[i] = freed.get(i, 0) + b
    for index, used in plan.device_bytes:
        room = next(r for r in rooms if r.index == index)
        assert used <= room.free_bytes + freed.get(index, 0) - reserve
    assert plan.host_bytes <= host_free + sum(m.host_bytes for m in evicted)
    assert len(loaded) - len(plan.evict) < cap
    assert sum(n for _, n in plan.layers_per_device) == plan.gpu_layers


@settings(max_examples=100, deadline=None)
@given(estimates, st.lists(st.integers(0, 24 * GIB), min_size=1, max_size=3), st.data())
def test_request_traces_keep_devices_within_capacity(
    e: Est, sizes: list[int], data: st.DataObject
) -> None:
    """Replay a random trace of loads and unloads, tracking what each placement takes."""
    free = dict(enumerate(sizes))
    loaded: dict[str, tuple[LoadedView, Placement]] = {}
    for step in range(12):
        if loaded and data.draw(st.booleans()):
            name = data.draw(st.sampled_from(sorted(loaded)))
            _, gone = loaded.pop(name)
            for i, b in gone.device_bytes:
                free[i] += b
            continue
        rooms = [DeviceRoom(i, f) for i, f in free.items()]
        views = [v for v, _ in loaded.values()]
        plan = place(e, rooms, views, reserve_bytes=MIB, host_free_bytes=8 * GIB, max_loaded=3)
        if plan.refused:
            continue
        for n in plan.evict:
            _, gone = loaded.pop(n)
            for i, b in gone.device_bytes:
                free[i] += b
        for i, b in plan.device_bytes:
            free[i] -= b
            assert free[i] >= MIB, "placed past free memory minus the reserve"
        pinned = data.draw(st.booleans())
        loaded[f"m{step}"] = (
            LoadedView(f"m{step}", plan.host_bytes, False, pinned, step, 0, plan.device_bytes),
            plan,
        )
    assert all(f >= 0 for f in free.values())


def test_context_overhead_and_companions_are_paid_on_each_gpu_used() -> None:
    """10 blocks of 100 MiB + a 50 MiB head + 100 MiB compute = 1150 MiB on one device; with a
    300 MiB CUDA context and a 200 MiB projector, 1650 MiB."""
    plain = est()
    extra = dataclasses.replace(plain, context_bytes=300 * MIB, companion_bytes=200 * MIB)
    assert go(plain, [DeviceRoom(0, 1150 * MIB)]).gpu_layers == 11
    partial = go(extra, [DeviceRoom(0, 1150 * MIB)])
    assert partial.gpu_layers == 6  # 650 MiB of fixed costs leave room for 5 blocks + the head
    assert partial.device_bytes == ((0, 1150 * MIB),)
    full = go(extra, [DeviceRoom(0, 1650 * MIB)])
    assert full.gpu_layers == 11 and full.device_bytes == ((0, 1650 * MIB),)
    split = go(extra, [DeviceRoom(0, 1200 * MIB), DeviceRoom(1, 1200 * MIB)])
    assert split.kind == "split" and split.gpu_layers == 11  # 1050 MiB of layers over two
    assert sum(b for _, b in split.device_bytes) == 1050 * MIB + 2 * 600 * MIB  # fixed: each
    # in host memory (no GPU) the projector counts, the CUDA context does not
    assert extra.cpu_total_bytes() == plain.cpu_total_bytes() + 200 * MIB
    assert host_bytes(extra, 0) == host_bytes(plain, 0) + 200 * MIB


def _node(name: str, free_gib: list[float], loaded: tuple[LoadedView, ...] = ()) -> NodeView:
    rooms = tuple(DeviceRoom(i, int(g * GIB)) for i, g in enumerate(free_gib))
    return NodeView(name, rooms, loaded, host_free_bytes=64 * GIB, max_loaded=10)


def test_fleet_takes_the_best_fit_without_evicting() -> None:
    """1.15 GiB needed: the 2 GiB node, not the 8 GiB one (kept for large models); a node that
    would have to evict comes after both."""
    idle = LoadedView(
        "x", 0, busy=False, pinned=False, last_used=0, ttl_s=0, device_bytes=((0, 5 * GIB),)
    )
    nodes = [_node("big", [8]), _node("full", [0.5], (idle,)), _node("small", [2])]
    chosen = place_on_fleet(est(), nodes, reserve_bytes=0)
    assert chosen.node == "small" and chosen.placement.evict == ()
    alone = place_on_fleet(est(), [nodes[1]], reserve_bytes=0)
    assert (alone.node, alone.placement.evict) == ("full", ("x",))


def test_fleet_prefers_all_layers_on_gpu_and_the_cheapest_eviction() -> None:
    small = LoadedView(
        "s", 0, busy=False, pinned=False, last_used=0, ttl_s=0, device_bytes=((0, GIB),)
    )
    large = LoadedView(
        "l", 0, busy=False, pinned=False, last_used=0, ttl_s=0, device_bytes=((0, 4 * GIB),)
    )
    nodes = [_node("partial", [0.6]), _node("a", [0.5], (large,)), _node("b", [0.5], (small,))]
    chosen = place_on_fleet(est(), nodes, reserve_bytes=0)
    assert chosen.node == "b" and chosen.placement.evict == ("s",)
    assert chosen.placement.gpu_layers == est().layers


def test_fleet_refusal_says_wait_when_busy_models_hold_the_room() -> None:
    busy = LoadedView(
        "b", 2 * GIB, busy=True, pinned=False, last_used=0, ttl_s=0, device_bytes=((0, GIB),)
    )
    node = NodeView("n", (DeviceRoom(0, 0),), (busy,), host_free_bytes=0, max_loaded=10)
    chosen = place_on_fleet(est(), [node], reserve_bytes=0)
    assert chosen.node is None and chosen.placement.wait


def test_no_wait_for_busy_models_whose_room_would_not_be_enough() -> None:
    """Waiting only helps when unloading the busy models would make room."""
    busy = view("b", 100 * MIB, busy=True, dev=((0, 100 * MIB),))
    plan = go(est(), [DeviceRoom(0, 100 * MIB)], [busy], host_free_bytes=100 * MIB)
    assert plan.refused and not plan.wait and "every other model unloaded" in plan.refused
    roomy = view("b", 2 * GIB, busy=True, dev=((0, 100 * MIB),))
    plan = go(est(), [DeviceRoom(0, 100 * MIB)], [roomy], host_free_bytes=100 * MIB)
    assert plan.refused and plan.wait


def test_busy_models_do_not_make_a_load_wait_on_a_cap_only_pinned_ones_fill() -> None:
    loaded = [view("p", pinned=True), view("q", pinned=True), view("b", busy=True)]
    plan = go(est(), [], loaded, max_loaded=2)
    assert plan.refused and "pinned" in plan.refused and not plan.wait
