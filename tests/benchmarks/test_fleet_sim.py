"""The fleet simulator's accounting on a tiny trace computed by hand (bench/fleet_sim.py)."""

from __future__ import annotations

import pytest
from bench import fleet_sim as fs
from bench import fleet_traces as ft

from ml_offload.vram import MemoryEstimate

GIB = 2**30
# 4 GiB on a GPU each (three blocks and the head, 1 GiB apiece); 2 GiB files: 3 s to load
EST = MemoryEstimate((GIB,) * 3, GIB, 0, 0)
MODELS = {n: fs.Model(n, EST, 2 * GIB) for n in "ABC"}
NODE = (ft.NodeSpec("n", (10 * GIB,), 64 * GIB),)  # room for two of them, not three
CFG = fs.Config(load_gib_s=1.0, start_s=1.0)
TRACE = [
    ft.Request(0, "A", 1),  # cold: loads 0 -> 3, waits 3, busy until 4
    ft.Request(1, "A", 1),  # loading: waits 2 (not a hit), ends 4
    ft.Request(10, "A", 1),  # hit, ends 11
    ft.Request(10, "B", 2),  # cold beside A: ready 13, waits 3, ends 15
    ft.Request(20, "C", 1),  # cold: evicts A (least recently used), ready 23, waits 3
    ft.Request(30, "A", 1),  # cold: evicts B (used at 15, C at 24), waits 3
]


def test_byte_aware_accounting() -> None:
    stats = fs.simulate(TRACE, MODELS, NODE, fs.ByteAware(), CFG)
    assert stats.waits == [3, 2, 0, 3, 3, 3]
    assert stats.latencies == [4, 3, 1, 5, 4, 4]
    row = stats.row()
    assert (row["loads"], row["evictions"], row["ooms"], row["partial"]) == (4, 2, 0, 0)
    assert row["hit_rate"] == pytest.approx(1 / 6)
    assert row["p95_wait_s"] == 3
    assert row["gib_loaded"] == 8


def test_count_lru_pays_for_the_oom() -> None:
    """With a cap of 4 models nothing is unloaded for C until its load fails (one process
    start lost, 1 s), then A goes: C is ready at 20 + 1 + 3."""
    stats = fs.simulate(TRACE, MODELS, NODE, fs.CountLru(max_models=4), CFG)
    assert stats.waits == [3, 2, 0, 3, 4, 4]  # A again: B in the way, one more OOM
    assert (stats.ooms, stats.loads, stats.evictions) == (2, 4, 2)


def test_static_groups_swap_what_does_not_fit() -> None:
    """A and B are groups of their own; C fits nowhere and joins A's group (the first of the
    smallest): loading C unloads A, loading A unloads C."""
    static = fs.Static(list(MODELS.values()), NODE)
    assert static.group == {"A": ("n", "A"), "B": ("n", "B"), "C": ("n", "A")}
    stats = fs.simulate(TRACE, MODELS, NODE, static, CFG)
    assert stats.waits == [3, 2, 0, 3, 3, 3]
    assert stats.evictions == 2
