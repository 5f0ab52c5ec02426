"""Rotation: the chain goes on across files; verify, tail, follow and export read them all."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ml_offload.config import AuditSettings
from ml_offload.security.audit import AuditLog
from ml_offload.security.audit_format import log_files, rotated_path
from ml_offload.security.audit_read import export, follow, iter_entries, tail, verify
from ml_offload.security.audit_sign import load_public_key

PAD = "x" * 250  # ~400-byte lines: one batch of 8 is ~3.3 kB


def settings(tmp_path: Path, **opts: Any) -> AuditSettings:
    base = {
        "fsync": False,
        "flush_interval_s": 60.0,
        "batch_size": 8,
        "rotate_bytes": 4096,
        "checkpoint_every": 10,
        "signing_key_file": tmp_path / "keys" / "k",
    }
    return AuditSettings(**(base | opts))


async def write(path: Path, opts: AuditSettings, n: int, start: int = 0) -> None:
    async with AuditLog(opts, path) as audit:
        for i in range(start, start + n):
            audit.record({"time": 1_700_000_000.0 + i, "request_id": f"r{i}", "pad": PAD})
            if i % 8 == 7:
                await audit.flush()  # one batch at a time, as a busy writer would


@pytest.fixture
def rotated(tmp_path: Path) -> Path:
    path = tmp_path / "audit" / "audit.jsonl"
    asyncio.run(write(path, settings(tmp_path), 40))
    return path


def ids(path: Path) -> list[str]:
    return [e.event["request_id"] for e in iter_entries(path) if "request_id" in e.event]


def test_the_chain_goes_on_across_three_files(tmp_path: Path, rotated: Path) -> None:
    files = log_files(rotated)
    assert len(files) >= 3 and files[-1] == rotated
    assert files[0] == rotated_path(rotated, 1) and files[0].name == "audit.000000000001.jsonl"
    for file in files[:-1]:  # each rotated file is sealed by a checkpoint, and near the size
        rows = file.read_bytes().splitlines(keepends=True)
        last = json.loads(rows[-1])
        assert last["event"]["audit"] == "checkpoint"
        assert 4096 <= file.stat().st_size < 4096 + 10 * max(map(len, rows))  # a batch past it
        first_seq = json.loads(files[files.index(file) + 1].read_bytes().splitlines()[0])["seq"]
        assert file.name == f"audit.{int(file.name.split('.')[1]):012d}.jsonl"
        assert first_seq == last["seq"] + 1
    result = verify(rotated, [load_public_key(tmp_path / "keys" / "k")])
    assert result.ok, result.broken
    assert ids(rotated) == [f"r{i}" for i in range(40)]
    entries, _ = tail(rotated, 25)  # more than the live file holds
    assert [e.seq for e in entries] == list(range(result.last_seq - 24, result.last_seq + 1))
    out = io.StringIO()
    assert export(rotated, out, "jsonl") == result.entries


def test_a_restart_goes_on_in_the_live_file(tmp_path: Path, rotated: Path) -> None:
    before = verify(rotated)
    asyncio.run(write(rotated, settings(tmp_path, rotate_bytes=None), 3, start=40))
    after = verify(rotated)
    assert (
        after.ok and after.last_seq > before.last_seq and ids(rotated)[-3:] == ["r40", "r41", "r42"]
    )


def test_a_removed_middle_file_is_named(rotated: Path) -> None:
    files = log_files(rotated)
    files[1].unlink()
    result = verify(rotated)
    assert not result.ok and result.broken is not None
    assert result.broken.reason == "missing" and result.broken.file == files[2].name
    assert str(result.broken).startswith(f"{files[2].name} line 1 ")


def test_removed_oldest_files_are_retention_not_tampering(tmp_path: Path, rotated: Path) -> None:
    files = log_files(rotated)
    files[0].unlink()
    result = verify(rotated, [load_public_key(tmp_path / "keys" / "k")])
    assert result.ok and result.last_seq == verify(rotated).last_seq


def test_an_edit_in_a_rotated_file_is_named(rotated: Path) -> None:
    first = log_files(rotated)[0]
    first.write_bytes(first.read_bytes().replace(b'"r3"', b'"r9"'))
    broken = verify(rotated).broken
    assert broken is not None and broken.reason == "edited" and broken.file == first.name


def test_a_crash_between_rename_and_new_file_continues(tmp_path: Path, rotated: Path) -> None:
    seq = verify(rotated).last_seq
    os.rename(rotated, rotated_path(rotated, int(log_files(rotated)[-2].name.split(".")[1]) + 1))
    asyncio.run(write(rotated, settings(tmp_path), 2, start=40))
    result = verify(rotated)
    assert result.ok and result.last_seq > seq


def test_a_new_day_starts_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    daily = settings(tmp_path, rotate_bytes=None, rotate_daily=True)
    asyncio.run(write(path, daily, 3))
    asyncio.run(write(path, daily, 3, start=3))  # the same day: the same file
    assert log_files(path) == [path]
    yesterday = time.time() - 86_400
    os.utime(path, (yesterday, yesterday))
    asyncio.run(write(path, daily, 3, start=6))
    assert len(log_files(path)) == 2 and verify(path).ok
    assert ids(path) == [f"r{i}" for i in range(9)]


def test_follow_reads_through_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    opts = settings(tmp_path)
    asyncio.run(write(path, opts, 1))
    _, offset = tail(path, 1)
    seen: list[str] = []

    def reader() -> None:
        for entry in follow(path, offset, poll_s=0.01):
            if "request_id" in entry.event:
                seen.append(entry.event["request_id"])
            if len(seen) == 30:
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    asyncio.run(write(path, opts, 30, start=1))
    thread.join(timeout=30)
    assert len(log_files(path)) >= 3
    assert seen == [f"r{i}" for i in range(1, 31)]
