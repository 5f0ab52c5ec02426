"""The audit log: the chain as written, batching, and verify naming the first broken entry."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml_offload.config import AuditSettings, Settings
from ml_offload.errors import ConfigError
from ml_offload.security.audit import AuditLog, audit_path
from ml_offload.security.audit_format import GENESIS, head_path, iso_time, prompt_sha256
from ml_offload.security.audit_read import export, iter_entries, tail, verify

QUIET = {"flush_interval_s": 60.0, "fsync": False, "sign": False}  # wakes on batch or flush


def event(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "time": 1_700_000_000.0 + i,
        "request_id": f"r{i}",
        "key_id": "k1",
        "client": "127.0.0.1",
        "model": "m",
        "backend": "local",
        "status": 200,
        "prompt_tokens": i,
        "completion_tokens": 2,
        "latency_ms": 1.5,
        **extra,
    }


async def write_log(path: Path, n: int, start: int = 0, **opts: Any) -> AuditLog:
    audit = AuditLog(AuditSettings(**({"fsync": False, "sign": False} | opts)), path)
    async with audit:
        for i in range(start, start + n):
            audit.record(event(i))
    return audit


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(new))


@pytest.fixture
def log10(tmp_path: Path) -> Path:
    path = tmp_path / "audit" / "audit.jsonl"
    asyncio.run(write_log(path, 10))
    return path


def test_default_path_is_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(storage={"data_dir": tmp_path})  # type: ignore[arg-type]
    assert audit_path(settings) == tmp_path / "audit" / "audit.jsonl"
    settings = Settings(security={"audit": {"path": tmp_path / "x.jsonl"}})  # type: ignore[arg-type]
    assert audit_path(settings) == tmp_path / "x.jsonl"


def test_each_line_is_hashed_and_chained(log10: Path) -> None:
    prev = GENESIS
    for seq, raw in enumerate(lines(log10), start=1):
        body, _, rest = raw.rstrip(b"\n").rpartition(b',"hash":"')
        data = json.loads(raw)
        assert data["seq"] == seq and data["prev"] == prev
        assert data["hash"] == hashlib.sha256(body).hexdigest() == rest[:-2].decode()
        assert data["event"]["request_id"] == f"r{seq - 1}"
        prev = data["hash"]
    assert json.loads(head_path(log10).read_text()) == {"seq": 10, "hash": prev}
    result = verify(log10)
    assert result.ok and result.entries == 10 and result.last_hash == prev
    assert (log10.stat().st_mode & 0o777) == 0o600


async def test_record_only_queues_until_a_batch_is_full(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    async with AuditLog(AuditSettings(batch_size=8, **QUIET), path) as audit:
        for i in range(5):
            audit.record(event(i))
        assert path.read_bytes() == b""  # nothing written on the recording task
        for i in range(5, 8):
            audit.record(event(i))  # the 8th fills a batch: the writer wakes before its interval
        for _ in range(200):
            if len(lines(path)) == 8:
                break
            await asyncio.sleep(0.02)
        assert len(lines(path)) == 8
        audit.record(event(8))
        await audit.flush()
        assert len(lines(path)) == 9
    assert verify(path).entries == 9


async def test_restart_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await write_log(path, 5)
    second = await write_log(path, 5, start=5)
    assert second.last_seq == 10
    result = verify(path)
    assert result.ok and result.entries == 10
    assert [e.event["request_id"] for e in iter_entries(path)] == [f"r{i}" for i in range(10)]


def test_edited_line_is_named(log10: Path) -> None:
    rows = lines(log10)
    rows[3] = rows[3].replace(b'"status":200', b'"status":403')
    rewrite(log10, rows)
    broken = verify(log10).broken
    assert broken is not None and (broken.line, broken.seq, broken.reason) == (4, 4, "edited")
    assert str(broken).startswith("line 4 (seq 4): edited")


def test_an_edit_with_a_new_hash_breaks_the_next_link(log10: Path) -> None:
    rows = lines(log10)
    rows[3] = rehashed(rows[3], b'"status":200', b'"status":403')
    rewrite(log10, rows)
    result = verify(log10)
    assert result.broken is not None and (result.broken.line, result.broken.reason) == (5, "chain")
    assert result.entries == 4


def test_a_rehashed_last_line_is_caught_by_the_head(log10: Path) -> None:
    rows = lines(log10)
    rows[-1] = rehashed(rows[-1], b'"status":200', b'"status":403')
    rewrite(log10, rows)
    broken = verify(log10).broken
    assert broken is not None and (broken.line, broken.seq, broken.reason) == (10, 10, "head")


def rehashed(raw: bytes, old: bytes, new: bytes) -> bytes:
    body = raw[: raw.rindex(b',"hash":"')].replace(old, new)
    return body + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'


@pytest.mark.parametrize(
    ("index", "line", "seq", "reason"),
    [(4, 5, 6, "missing"), (0, 1, 2, "missing"), (9, 10, 10, "missing")],
    ids=["middle", "first", "last"],
)
def test_removed_line_is_named(log10: Path, index: int, line: int, seq: int, reason: str) -> None:
    rows = lines(log10)
    del rows[index]
    rewrite(log10, rows)
    result = verify(log10)
    assert not result.ok and result.broken is not None
    assert (result.broken.line, result.broken.seq, result.broken.reason) == (line, seq, reason)


def test_removed_last_line_names_the_head(log10: Path) -> None:
    rewrite(log10, lines(log10)[:-1])
    broken = verify(log10).broken
    assert broken is not None and "records seq 10" in broken.detail


def test_swapped_lines_are_named(log10: Path) -> None:
    rows = lines(log10)
    rows[6], rows[7] = rows[7], rows[6]
    rewrite(log10, rows)
    broken = verify(log10).broken
    assert broken is not None and (broken.line, broken.seq, broken.reason) == (7, 8, "out_of_order")
    assert "seq 7 here, but it is at line 8" in broken.detail


def test_a_duplicated_line_is_out_of_order(log10: Path) -> None:
    rows = lines(log10)
    rewrite(log10, [*rows, rows[2]])
    broken = verify(log10).broken
    assert broken is not None and (broken.line, broken.reason) == (11, "out_of_order")


def test_a_removed_head_still_verifies_the_chain(log10: Path) -> None:
    head_path(log10).unlink()
    result = verify(log10)
    assert result.ok and result.head_seq is None


async def test_torn_tail_is_reported_then_cut_on_restart(log10: Path) -> None:
    fragment = lines(log10)[-1][:40]
    with log10.open("ab") as f:
        f.write(fragment)  # what a write cut by a crash leaves
    result = verify(log10)
    assert result.ok and result.entries == 10 and result.torn_bytes == len(fragment)
    audit = await write_log(log10, 3, start=10)
    assert audit.cut_bytes == len(fragment)
    result = verify(log10)
    assert result.ok and result.entries == 13 and result.torn_bytes == 0


async def test_a_log_of_only_a_torn_line_restarts_from_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"seq":1,"prev":"00')
    await write_log(path, 2)
    assert verify(path).ok and verify(path).entries == 2


async def test_second_writer_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    async with AuditLog(AuditSettings(**QUIET), path):
        with pytest.raises(ConfigError, match="another process"):
            await AuditLog(AuditSettings(**QUIET), path).start()
    await write_log(path, 1)  # the lock goes with the first writer


async def test_unwritable_folder_is_one_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot open audit log"):
        await AuditLog(AuditSettings(**QUIET), blocker / "audit.jsonl").start()


async def test_prompts_are_hashed_unless_kept(tmp_path: Path) -> None:
    for keep in (False, True):
        path = tmp_path / f"{keep}.jsonl"
        async with AuditLog(AuditSettings(log_prompts=keep, **QUIET), path) as audit:
            audit.record(event(0, prompt="secret question"))
            audit.record(event(1, prompt=[{"role": "user", "content": "hi"}]))
        first, second = (e.event for e in iter_entries(path))
        assert first["prompt_sha256"] == hashlib.sha256(b"secret question").hexdigest()
        assert second["prompt_sha256"] == prompt_sha256([{"content": "hi", "role": "user"}])
        assert ("prompt" in first) is keep and (b"secret question" in path.read_bytes()) is keep


async def test_odd_events_never_raise_and_still_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    async with AuditLog(AuditSettings(**QUIET), path) as audit:
        audit.record(event(0, extra=object(), path=Path("/x"), bad="\ud800 lone surrogate"))
        audit.record("not a dict")  # type: ignore[arg-type]
        audit.record(event(1, nested={"a": [1, 2.5, None, "é"]}))
    result = verify(path)
    assert result.ok and result.entries == 3
    entries = list(iter_entries(path))
    assert entries[0].event["path"] == "/x" and entries[0].event["bad"].endswith("surrogate")
    assert entries[2].event["nested"] == {"a": [1, 2.5, None, "é"]}


async def test_overflow_is_counted_in_the_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditSettings(**QUIET), path, max_pending=3)
    async with audit:
        for i in range(5):
            audit.record(event(i))
    events = [e.event for e in iter_entries(path)]
    assert [e.get("request_id") for e in events[:3]] == ["r0", "r1", "r2"]
    assert events[3]["audit"] == "dropped" and events[3]["count"] == 2
    assert audit.dropped_total == 2 and verify(path).ok


async def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    async with AuditLog(AuditSettings(enabled=False), path) as audit:
        audit.record(event(0))
    assert not path.exists()


def test_tail_reads_from_the_end(log10: Path) -> None:
    entries, offset = tail(log10, 3)
    assert [e.seq for e in entries] == [8, 9, 10] and offset == log10.stat().st_size
    assert [e.seq for e in tail(log10, 50)[0]] == list(range(1, 11))


def test_export_jsonl_and_since(log10: Path) -> None:
    buf = io.StringIO()
    assert export(log10, buf, "jsonl") == 10
    rows = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert rows[0]["seq"] == 1 and rows[0]["request_id"] == "r0" and len(rows[0]["hash"]) == 64
    buf = io.StringIO()
    assert export(log10, buf, "jsonl", since=1_700_000_007.0) == 3


async def test_since_reads_iso_times(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    async with AuditLog(AuditSettings(**QUIET), path) as audit:
        audit.record(event(0, time="2026-01-31T08:00:00.000+00:00"))
        audit.record(event(1, time="2026-01-31T09:00:00Z"))
    nine = datetime(2026, 1, 31, 9, tzinfo=UTC).timestamp()
    assert [e.seq for e in iter_entries(path, since=nine)] == [2]
    buf = io.StringIO()
    export(path, buf, "csv")
    assert "2026-01-31T08:00:00.000+00:00" in buf.getvalue()


async def test_export_csv(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    async with AuditLog(AuditSettings(**QUIET), path) as audit:
        audit.record(event(0, key_name="=cmd|calc", redactions={"secrets": 2}, custom="x"))
    buf = io.StringIO()
    assert export(path, buf, "csv") == 1
    (row,) = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert row["seq"] == "1" and row["time"] == "2023-11-14T22:13:20.000Z"
    assert row["key_name"] == "'=cmd|calc"  # never a spreadsheet formula
    assert json.loads(row["redactions"]) == {"secrets": 2}
    assert json.loads(row["extra"]) == {"custom": "x"}
    assert row["status"] == "200" and row["latency_ms"] == "1.5" and row["prompt"] == ""


# --------------------------------------------------------------------------- property

_SAMPLE: dict[str, bytes] = {}


def sample_log() -> tuple[bytes, bytes]:
    """One log with varied events (unicode, nesting, floats) and its head, made once."""
    if not _SAMPLE:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "audit.jsonl"

            async def make() -> None:
                async with AuditLog(AuditSettings(batch_size=7, **QUIET), path) as audit:
                    for i in range(25):
                        audit.record(event(i, note="ü€😀" * (i % 3), deep={"l": [i, i / 7]}))

            asyncio.run(make())
            _SAMPLE["log"], _SAMPLE["head"] = path.read_bytes(), head_path(path).read_bytes()
    return _SAMPLE["log"], _SAMPLE["head"]


def verify_bytes(data: bytes, head: bytes) -> bool:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "audit.jsonl"
        path.write_bytes(data)
        head_path(path).write_bytes(head)
        return verify(path).ok


edits = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("swap"), st.integers(0, 10**6), st.integers(1, 24)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edit=edits)
def test_any_single_edit_is_detected(edit: tuple[str, int, int]) -> None:
    data, head = sample_log()
    assert verify_bytes(data, head)
    kind, where, arg = edit
    rows = data.splitlines(keepends=True)
    if kind == "byte":
        i = where % len(data)
        new = arg if arg != data[i] else (arg + 1) % 256
        changed = data[:i] + bytes([new]) + data[i + 1 :]
    elif kind == "delete":
        changed = b"".join(rows[: where % len(rows)] + rows[where % len(rows) + 1 :])
    elif kind == "swap":
        a, b = where % len(rows), (where + arg) % len(rows)
        rows[a], rows[b] = rows[b], rows[a]
        changed = b"".join(rows)
    else:
        changed = data[: where % len(data)]
    assert verify_bytes(changed, head) is False


def test_sample_log_is_valid_json_lines() -> None:
    data, _ = sample_log()
    assert all(orjson.loads(x)["event"]["request_id"] for x in data.splitlines())


DISK_FULL = """
import asyncio, resource, signal, sys
from pathlib import Path
from ml_offload.config import AuditSettings
from ml_offload.security.audit import AuditLog

async def main() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    settings = AuditSettings(flush_interval_s=60, batch_size=1000, fsync=False, sign=False)
    audit = AuditLog(settings, Path(sys.argv[1]))
    await audit.start()
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    for i in range(300):
        audit.record({"time": 1.0, "request_id": f"r{i}", "pad": "x" * 100})
    await audit.flush()  # a short write, then EFBIG: the half batch is cut, the batch kept
    print(audit.written, Path(sys.argv[1]).stat().st_size, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    await audit.close()
    print(audit.written, flush=True)

asyncio.run(main())
"""


def test_a_failed_write_leaves_no_half_batch_and_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    during, after = done.stdout.splitlines()
    assert during == "0 0"  # nothing written, nothing half written
    assert after == "300" and "cannot append to audit log" in done.stderr
    result = verify(path)
    assert result.ok and result.entries == 300


@pytest.mark.parametrize(
    "t",
    [0, 1.5, 1_700_000_000, 1_700_000_000.0005, 1_700_000_000.9995, 1_799_999_999.9999996, -1.5],
)
def test_event_times_are_written_as_datetime_writes_them(t: float) -> None:
    expected = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    assert iso_time(t) == expected
    assert iso_time(t) == expected  # the second's text reused
