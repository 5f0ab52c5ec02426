"""`mlo audit` through real subprocesses, and a writer killed (SIGKILL) in the middle of logging."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ml_offload.config import AuditSettings
from ml_offload.security.audit import AuditLog
from ml_offload.security.audit_format import GENESIS, encode_entry, head_path
from ml_offload.security.audit_read import verify
from tests.integration.conftest import GatewayFactory, stop
from tests.integration.fake_upstream import Reply, fake_openai

N = 40


def mlo(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", "audit", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "200", "MLO_CONFIG": ""},
        timeout=60,
    )


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.strip()]
    return line


async def write_events(path: Path, start: int, n: int, *, sign: bool = False) -> None:
    async with AuditLog(AuditSettings(fsync=False, sign=sign, checkpoint_every=8), path) as audit:
        for i in range(start, start + n):
            audit.record(
                {
                    "time": time.time(),
                    "request_id": f"r{i}",
                    "key_id": "k1",
                    "key_name": "ci",
                    "client": "127.0.0.1",
                    "method": "POST",
                    "path": "/v1/chat/completions",
                    "model": "m",
                    "backend": "fake",
                    "status": 200,
                    "prompt_tokens": 3,
                    "completion_tokens": 5,
                    "latency_ms": 12.5,
                    "prompt": f"question {i}",
                }
            )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A config whose data_dir holds a log of N entries made by the writer."""
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    log = tmp_path / "data" / "audit" / "audit.jsonl"
    asyncio.run(write_events(log, 0, N))
    return config, log


def test_verify_tail_export(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = setup
    done = mlo(config, "verify")
    assert done.returncode == 0 and done.stdout.startswith(f"ok: {N} entries"), done.stderr
    rows = [json.loads(x) for x in mlo(config, "tail", "-n", "3", "--json").stdout.splitlines()]
    assert [r["seq"] for r in rows] == [N - 2, N - 1, N] and rows[-1]["request_id"] == f"r{N - 1}"
    assert "prompt" not in rows[0] and len(rows[0]["prompt_sha256"]) == 64
    table = mlo(config, "tail").stdout
    assert "SEQ" in table and "/v1/chat/completions" in table and "12 ms" in table
    jsonl = mlo(config, "export", "--format", "jsonl").stdout.splitlines()
    assert len(jsonl) == N and json.loads(jsonl[0])["seq"] == 1
    out = tmp_path / "audit.csv"
    done = mlo(config, "export", "--format", "csv", "--output", str(out))
    assert done.returncode == 0 and f"exported {N} entries" in done.stdout
    with out.open(newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == N and records[5]["request_id"] == "r5" and records[5]["hash"]
    assert mlo(config, "export", "--format", "jsonl", "--since", "1h").stdout.count("\n") == N
    assert mlo(config, "export", "--format", "jsonl", "--since", "2999-01-01").stdout == ""


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("edit", "line 7 (seq 7): edited"),
        ("remove", "line 7 (seq 8): missing: seq 7 removed"),
        ("remove_last", f"line {N} (seq {N}): missing"),
        ("swap", "line 7 (seq 8): out of order: expected seq 7 here, but it is at line 8"),
    ],
)
def test_verify_names_the_first_broken_entry(
    setup: tuple[Path, Path], edit: str, expected: str
) -> None:
    config, log = setup
    rows = log.read_bytes().splitlines(keepends=True)
    if edit == "edit":
        rows[6] = rows[6].replace(b'"status":200', b'"status":201')
    elif edit == "remove":
        del rows[6]
    elif edit == "remove_last":
        del rows[-1]
    else:
        rows[6], rows[7] = rows[7], rows[6]
    log.write_bytes(b"".join(rows))
    line = error_line(mlo(config, "verify"))
    assert line.startswith("error: audit log ") and expected in line


def test_errors_are_one_line(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    config, _ = setup
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[storage]\ndata_dir = "{tmp_path / "nothing"}"\n')
    assert "no audit log at" in error_line(mlo(empty, "verify"))
    assert "unknown --format" in error_line(mlo(config, "export", "--format", "xml"))
    assert "cannot read --since" in error_line(mlo(config, "export", "--since", "yesterday"))


def forge(log: Path) -> None:
    """The forger: request r3's status changed, then every hash and the head rewritten, so
    that the chain holds (only the signed checkpoints can tell)."""
    prev, out = GENESIS, []
    for seq, raw in enumerate(log.read_bytes().splitlines(), start=1):
        event = json.loads(raw)["event"]
        if event.get("request_id") == "r3":
            event["status"] = 403
        line, prev = encode_entry(seq, prev, json.dumps(event).encode())
        out.append(line)
    log.write_bytes(b"".join(out))
    head_path(log).write_text(json.dumps({"seq": len(out), "hash": prev}))


def test_a_chain_rewritten_whole_fails_verify_with_the_public_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    log = tmp_path / "data" / "audit" / "audit.jsonl"
    asyncio.run(write_events(log, 0, N, sign=True))
    pem = tmp_path / "audit.pub"
    done = mlo(config, "public-key", "--output", str(pem))
    assert done.returncode == 0 and pem.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert not list(log.parent.glob("*.key"))  # the private key is not in the log's folder
    done = mlo(config, "verify", "--public-key", str(pem))
    assert done.stdout.startswith(f"ok: {N + 6} entries") and "6 signed checkpoints" in done.stdout
    forge(log)
    assert mlo(config, "verify").returncode == 0  # the chain alone is fooled
    line = error_line(mlo(config, "verify", "--public-key", str(pem)))
    assert "line 10 (seq 10): signature: its signature does not match" in line
    assert "not a PEM public key" in error_line(mlo(config, "verify", "--public-key", str(config)))


def test_verify_tail_export_read_across_rotated_files(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    log = tmp_path / "data" / "audit" / "audit.jsonl"
    opts = AuditSettings(fsync=False, rotate_bytes=4096, batch_size=8, flush_interval_s=60)

    async def write() -> None:
        async with AuditLog(opts, log) as audit:
            for i in range(N):
                audit.record({"time": time.time(), "request_id": f"r{i}", "pad": "x" * 300})
                if i % 8 == 7:
                    await audit.flush()

    asyncio.run(write())
    files = sorted(log.parent.glob("audit.*.jsonl"))
    assert len(files) >= 2  # and the live file: three or more
    done = mlo(config, "verify")
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stderr
    exported = [json.loads(x) for x in mlo(config, "export").stdout.splitlines()]
    assert [r["request_id"] for r in exported if "request_id" in r] == [f"r{i}" for i in range(N)]
    rows = mlo(config, "tail", "-n", str(len(exported)), "--json").stdout.splitlines()
    assert [json.loads(x)["seq"] for x in rows] == [r["seq"] for r in exported]
    files[1].unlink()
    line = error_line(mlo(config, "verify"))
    assert f"{files[2].name if len(files) > 2 else 'audit.jsonl'} line 1 " in line
    assert "missing: seqs " in line


def test_tail_follow_prints_new_entries(setup: tuple[Path, Path]) -> None:
    config, log = setup
    cmd = [sys.executable, "-m", "ml_offload.cli.main", "audit", "tail", "-n", "1", "-f", "--json"]
    proc = subprocess.Popen(
        [*cmd, "--config", str(config)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=pump, args=(proc, lines), daemon=True).start()
    try:
        assert json.loads(lines.get(timeout=30))["seq"] == N
        asyncio.run(write_events(log, N, 2))
        seqs = [json.loads(lines.get(timeout=30))["seq"] for _ in range(2)]
        assert seqs == [N + 1, N + 2]
    finally:
        proc.kill()
        proc.wait()


def test_the_gateway_audits_each_request(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
    }
    with fake_openai(lambda r: Reply(body=answer)) as fake:
        gw = gateway_factory(models=[{"name": "m", "url": fake.url}], demo_model=False)
        for i in range(5):
            gw.client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"secret {i}"}]
            )
        stop(gw)  # close() flushes the writer
    config = tmp_path / "gw0" / "config.toml"
    done = mlo(config, "verify")
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stdout + done.stderr
    rows = [json.loads(x) for x in mlo(config, "tail", "-n", "50", "--json").stdout.splitlines()]
    chats = [r for r in rows if r.get("path") == "/v1/chat/completions"]
    assert len(chats) == 5 and {r["model"] for r in chats} == {"m"}
    assert all(r["status"] == 200 and r["completion_tokens"] == 1 for r in chats)
    assert all(len(r["prompt_sha256"]) == 64 and "prompt" not in r for r in chats)
    log = tmp_path / "gw0" / "data" / "audit" / "audit.jsonl"
    assert b"secret 1" not in log.read_bytes()


def pump(proc: subprocess.Popen[str], into: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.put(line)


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from ml_offload.config import AuditSettings
    from ml_offload.security.audit import AuditLog

    async def main() -> None:
        settings = AuditSettings(batch_size=64, flush_interval_s=0.01, fsync=sys.argv[2] == "1")
        audit = AuditLog(settings, Path(sys.argv[1]))
        await audit.start()
        print("READY", flush=True)
        i = 0
        while True:  # as fast as it goes, until killed
            for _ in range(200):
                i += 1
                audit.record({"time": time.time(), "request_id": f"c{i}", "status": 200,
                              "model": "m", "prompt": "x" * (i % 300)})
            await asyncio.sleep(0.001)  # a wait, as a server has: the writer thread gets the GIL

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("fsync", [False, True], ids=["no-fsync", "fsync"])
def test_a_writer_killed_while_logging_leaves_a_log_that_verifies(
    tmp_path: Path, fsync: bool
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    log = tmp_path / "data" / "audit" / "audit.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(log), "1" if fsync else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "READY"
        wait_for(lambda: log.stat().st_size > 1_000_000, what="1 MB of log")
        wait_for(lambda: head_path(log).exists(), what="the head file")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    done = mlo(config, "verify")
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stdout + done.stderr
    pem = tmp_path / "audit.pub"
    assert mlo(config, "public-key", "-o", str(pem)).returncode == 0
    done = mlo(config, "verify", "--public-key", str(pem))  # the tail after the last checkpoint
    assert done.returncode == 0 and "signed checkpoints verified" in done.stdout, done.stderr
    before = verify(log)
    assert before.ok and before.entries > 1000
    asyncio.run(write_events(log, 0, 50))  # a restart cuts a torn tail and continues the chain
    after = verify(log)
    assert after.ok and after.torn_bytes == 0 and after.entries == before.entries + 50
    assert after.last_seq == before.last_seq + 50
    assert mlo(config, "verify").stdout.startswith(f"ok: {after.entries} entries")


def wait_for(check: Any, *, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"waited {timeout_s}s for {what}")


def test_verify_the_logs_of_several_gateways(tmp_path: Path) -> None:
    """A fleet: each gateway writes its own signed chain; one `mlo audit verify` checks them
    all with their public keys, a line each, and fails naming the log that was rewritten."""
    logs, pems = [], []
    for name in ("gw1", "gw2"):
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[storage]\ndata_dir = "{tmp_path / name}"\n')
        log = tmp_path / name / "audit" / "audit.jsonl"
        asyncio.run(write_events(log, 0, N, sign=True))
        pem = tmp_path / f"{name}.pub"
        assert mlo(config, "public-key", "--output", str(pem)).returncode == 0
        logs.append(str(log))
        pems += ["--public-key", str(pem)]
    done = mlo(tmp_path / "gw1.toml", "verify", *logs, *pems)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [ln.split(": ok: ")[0] for ln in lines] == logs
    assert all("6 signed checkpoints verified" in ln for ln in lines)
    as_json = json.loads(mlo(tmp_path / "gw1.toml", "verify", *logs, *pems, "--json").stdout)
    assert [(r["file"], r["ok"]) for r in as_json] == [(logs[0], True), (logs[1], True)]

    forge(Path(logs[1]))  # gw2's log rewritten whole: its chain holds, its signatures do not
    done = mlo(tmp_path / "gw1.toml", "verify", *logs, *pems)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith(f"{logs[0]}: ok: ")
    assert done.stdout.splitlines()[1].startswith(f"{logs[1]}: broken at line 10")
    assert "1 of 2 audit logs are broken" in done.stderr
