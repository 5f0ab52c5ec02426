"""Signed checkpoints: a chain rewritten whole (every hash and its head) is caught with the key."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ml_offload.config import AuditSettings
from ml_offload.errors import ConfigError
from ml_offload.security.audit import AuditLog
from ml_offload.security.audit_format import GENESIS, encode_entry, head_path
from ml_offload.security.audit_read import verify
from ml_offload.security.audit_sign import load_public_key, signing_key_path


def settings(tmp_path: Path, **opts: Any) -> AuditSettings:
    base = {"fsync": False, "checkpoint_every": 4, "signing_key_file": tmp_path / "keys" / "k"}
    return AuditSettings(**(base | opts))


async def write(path: Path, audit_settings: AuditSettings, n: int, start: int = 0) -> None:
    async with AuditLog(audit_settings, path) as audit:
        for i in range(start, start + n):
            audit.record({"time": 1_700_000_000.0 + i, "request_id": f"r{i}", "status": 200})


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw)["event"] for raw in path.read_bytes().splitlines()]


def public(tmp_path: Path) -> list[Ed25519PublicKey]:
    return [load_public_key(tmp_path / "keys" / "k")]


def rewrite_whole(path: Path, change: Any) -> None:
    """The forger's attack: change entries, recompute every hash and the head file."""
    prev, seq, out = GENESIS, 0, []
    for raw in path.read_bytes().splitlines():
        event = change(json.loads(raw)["event"])
        if event is None:
            continue
        seq += 1
        line, prev = encode_entry(seq, prev, orjson.dumps(event))
        out.append(line)
    path.write_bytes(b"".join(out))
    head_path(path).write_text(json.dumps({"seq": seq, "hash": prev}))


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    path = tmp_path / "audit" / "audit.jsonl"
    asyncio.run(write(path, settings(tmp_path), 10))
    return path


def test_the_key_is_made_once_apart_from_the_log(tmp_path: Path, signed: Path) -> None:
    key = tmp_path / "keys" / "k"
    assert (key.stat().st_mode & 0o777) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    before = key.read_bytes()
    asyncio.run(write(signed, settings(tmp_path), 1, start=10))
    assert key.read_bytes() == before  # reused, not replaced
    default = signing_key_path(AuditSettings(), tmp_path / "audit" / "audit.jsonl")
    assert default == tmp_path / "audit-keys" / "audit.jsonl.key"  # beside the folder, not in it


def test_checkpoints_begin_every_n_and_end_the_log(tmp_path: Path, signed: Path) -> None:
    kinds = "".join(
        "C" if e.get("audit") == "checkpoint" else e["request_id"][1:] for e in events(signed)
    )
    # a new log starts signed; one after every 4 entries; one at close over the last 2
    assert kinds == "C0123C4567C89C"
    result = verify(signed, public(tmp_path))
    assert result.ok and result.checkpoints == 4 and result.unsigned_tail == 0
    assert verify(signed).ok  # without the key: the chain and head as before


def test_a_chain_rewritten_whole_is_caught_only_with_the_key(tmp_path: Path, signed: Path) -> None:
    def forge(event: dict[str, Any]) -> dict[str, Any]:
        if event.get("request_id") == "r5":
            event["status"] = 500  # what the forger wants hidden... or changed
        return event

    rewrite_whole(signed, forge)
    assert verify(signed).ok  # every hash and the head agree: the chain alone cannot tell
    result = verify(signed, public(tmp_path))
    assert not result.ok and result.broken is not None
    assert result.broken.reason == "signature" and result.broken.seq == 11  # the next checkpoint
    assert "signature does not match" in str(result.broken)


def test_removing_checkpoints_does_not_help_the_forger(tmp_path: Path, signed: Path) -> None:
    rewrite_whole(signed, lambda e: None if e.get("audit") == "checkpoint" else e)
    assert verify(signed).ok
    result = verify(signed, public(tmp_path))
    assert not result.ok and result.broken is not None
    assert "no signed checkpoint" in str(result.broken)


def test_removing_the_middle_checkpoints_shows(tmp_path: Path, signed: Path) -> None:
    seen = []

    def drop_middle(e: dict[str, Any]) -> dict[str, Any] | None:
        if e.get("audit") == "checkpoint":
            seen.append(e)
            if len(seen) in (2, 3):
                return None
        return e

    rewrite_whole(signed, drop_middle)
    result = verify(signed, public(tmp_path))
    assert not result.ok and result.broken is not None
    assert result.broken.reason == "signature"  # the last checkpoint's prev changed, or too many


def test_another_key_is_refused_and_old_keys_can_be_given(tmp_path: Path, signed: Path) -> None:
    other = tmp_path / "other" / "k"
    asyncio.run(write(signed, settings(tmp_path, signing_key_file=other), 3, start=10))
    mine, theirs = public(tmp_path), [load_public_key(other)]
    broken = verify(signed, mine).broken
    assert broken is not None and broken.reason == "signature"
    assert verify(signed, mine + theirs).ok  # a key rotated: give both


async def test_the_interval_carries_over_a_restart_and_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(settings(tmp_path, checkpoint_every=5), path)
    await audit.start()
    for i in range(7):
        audit.record({"request_id": f"a{i}"})
    await audit.flush()
    thread, audit._thread = audit._thread, None  # a crash: the file left without a checkpoint
    assert thread is not None
    audit._stop = True
    audit._wake.set()
    await asyncio.to_thread(thread.join)
    audit._close_fds()
    await write(path, settings(tmp_path, checkpoint_every=5), 4, start=100)
    kinds = "".join("C" if e.get("audit") == "checkpoint" else "e" for e in events(path))
    assert kinds == "CeeeeeCeeeeeCeC"  # 2 left unsigned by the crash + 3 after the restart
    assert verify(path, public(tmp_path)).ok


async def test_an_unusable_key_file_is_one_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"security\.audit\.signing_key_file"):
        await AuditLog(settings(tmp_path, signing_key_file=blocker / "k"), tmp_path / "a").start()
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM"):
        await AuditLog(settings(tmp_path, signing_key_file=junk), tmp_path / "b").start()


async def test_unsigned_logs_are_not_signed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write(path, settings(tmp_path, sign=False), 5)
    assert all("audit" not in e for e in events(path))
    assert not (tmp_path / "keys").exists()
    broken = verify(path, [Ed25519PublicKey.from_public_bytes(bytes(32))]).broken
    assert broken is not None and "no signed checkpoint" in str(broken)
