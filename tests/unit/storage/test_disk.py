"""Models on disk, disk use, cache cleaning and the low-disk flag."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ml_offload.storage.disk import disk_space, find_garbage, list_models, remove, tree_size
from tests.unit.test_gguf import write_gguf


def test_list_models_names_sizes_and_quantizations(tmp_path: Path) -> None:
    write_gguf(tmp_path / "Tiny-F32.gguf", vocab_size=10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "Big-Q4_K_M-00001-of-00002.gguf").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "Big-Q4_K_M-00002-of-00002.gguf").write_bytes(b"x" * 50)
    (tmp_path / "mmproj-Tiny-f16.gguf").write_bytes(b"p")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "hidden.gguf").write_bytes(b"h")
    models = {m.name: m for m in list_models(tmp_path)}
    assert set(models) == {"tiny-f32", "big-q4_k_m"}
    big = models["big-q4_k_m"]
    assert (big.size_bytes, big.shards, big.quantization) == (150, 2, "Q4_K_M")  # from the name
    assert big.path.name == "Big-Q4_K_M-00001-of-00002.gguf"
    assert models["tiny-f32"].quantization  # read from the GGUF header
    assert list_models(tmp_path / "missing") == []


def test_find_garbage_and_remove(tmp_path: Path) -> None:
    models, logs = tmp_path / "models", tmp_path / "logs"
    records = models / ".cache" / "huggingface" / "download"
    records.mkdir(parents=True)
    logs.mkdir()
    (models / "kept.gguf").write_bytes(b"m")
    (records / "kept.gguf.metadata").write_text("x")
    (records / "gone.gguf.metadata").write_text("x")
    (records / "gone.gguf.lock").write_text("")
    (records / "abc.1234.incomplete").write_bytes(b"p" * 4096)
    old, fresh, active = logs / "old.log", logs / "fresh.log", logs / "active.log"
    for log in (old, fresh, active):
        log.write_text("log")
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    os.utime(active, (week_ago, week_ago))
    garbage = find_garbage(models, [logs], max_log_age_s=7 * 86400, keep=[active])
    found = {g.path.name: g.reason for g in garbage}
    assert found == {
        "abc.1234.incomplete": "partial download",
        "gone.gguf.metadata": "orphaned download record",
        "gone.gguf.lock": "orphaned download record",
        "old.log": "stale log",
    }
    assert remove(garbage) > 0
    assert (models / "kept.gguf").exists() and (records / "kept.gguf.metadata").exists()
    assert fresh.exists() and active.exists() and not old.exists()
    assert find_garbage(models, [logs], max_log_age_s=7 * 86400, keep=[active]) == []


def test_tree_size_and_disk_space(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10_000)
    assert tree_size(tmp_path) >= 10_000
    space = disk_space(tmp_path / "not" / "created", low_bytes=0)
    assert space.free_bytes > 0 and space.total_bytes >= space.free_bytes and not space.low
    assert disk_space(tmp_path, low_bytes=space.total_bytes + 1).low
