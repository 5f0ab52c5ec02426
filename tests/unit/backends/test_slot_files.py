"""Saved slots on disk: names per conversation and weights, pruned by age and size."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ml_offload.backends.slot_files import SlotBounds, SlotFiles
from ml_offload.domain import ModelSpec


def _files(tmp_path: Path, name: str = "m") -> SlotFiles:
    weights = tmp_path / f"{name}.gguf"
    weights.write_bytes(b"GGUF")
    spec = ModelSpec(name=name, path=weights)
    files = SlotFiles(tmp_path / "slots", spec, SlotBounds(max_bytes=100, max_age_s=60))
    files.folder.mkdir(parents=True)
    return files


def _save(files: SlotFiles, key: str, size: int, age_s: float = 0) -> Path:
    path = files.folder / files.name(key)
    path.write_bytes(b"x" * size)
    when = time.time() - age_s
    os.utime(path, (when, when))
    return path


def test_names_differ_by_conversation_and_by_weights(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert files.name("a") != files.name("b") and files.name("a").endswith(".bin")
    assert files.folder.name == "m"
    (tmp_path / "m.gguf").write_bytes(b"GGUF, another build")
    rebuilt = SlotFiles(files.root, ModelSpec(name="m", path=tmp_path / "m.gguf"), SlotBounds(1, 1))
    assert rebuilt.name("a") != files.name("a")  # never restored into other weights


def test_saved_finds_young_files_and_drops_old_ones(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert files.saved("a") is None
    _save(files, "a", 10)
    assert files.saved("a") == files.name("a")
    old = _save(files, "b", 10, age_s=120)
    assert files.saved("b") is None and not old.exists()


def test_prune_removes_expired_then_oldest_over_the_cap_across_models(tmp_path: Path) -> None:
    m, n = _files(tmp_path), _files(tmp_path, "n")
    expired = _save(m, "expired", 1, age_s=120)
    oldest = _save(n, "oldest", 60, age_s=30)
    middle = _save(m, "middle", 30, age_s=20)
    newest = _save(n, "newest", 30, age_s=10)
    m.prune()
    assert not expired.exists() and not oldest.exists()
    assert middle.exists() and newest.exists()  # 60 bytes: under the 100-byte cap
