"""Audit log cost: what `record()` costs the request path, and what the writer sustains.

(a) Burst: `--n` events recorded back to back on the event loop while the writer thread runs;
    the per-call cost of `record()` (µs, contention with the writer included) and the events/s
    the writer sustains (from the first record until `close()` has written and synced them all).
(b) Paced: `--rate` events/s (the gateway's 1,500 req/s target by default) for `--seconds`, each
    event the size of a gateway's; the CPU the process used per second beyond the pacing loop
    alone, i.e. what audit adds at that rate.
(c) `verify` speed in entries/s on the log (a).
Each with fsync off and on (the default), signed checkpoints on (the default). Temporary files only.

    python bench/audit.py [--n 200000] [--rate 1500] [--seconds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs

from ml_offload.config import AuditSettings
from ml_offload.security.audit import AuditLog
from ml_offload.security.audit_read import verify


def event(i: int) -> dict[str, Any]:
    return {
        "time": time.time(),
        "request_id": os.urandom(12).hex(),
        "key_id": "k_01HZX3",
        "key_name": "ci-bot",
        "client": "10.1.2.3:51234",
        "cert_subject": None,
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "llama-3.1-8b",
        "backend": "local:llama-3.1-8b",
        "prompt_tokens": 120 + i % 50,
        "completion_tokens": 64,
        "status": 200,
        "latency_ms": 231.4,
        "prompt_sha256": "9f" * 32,
        "redactions": 0,
    }


async def burst(path: Path, n: int, fsync: bool) -> dict[str, float]:
    events = [event(i) for i in range(n)]
    settings = AuditSettings(fsync=fsync, signing_key_file=path.with_suffix(".key"))
    audit = AuditLog(settings, path, max_pending=n + 1)
    await audit.start()
    t0 = time.perf_counter()
    for i, ev in enumerate(events):
        audit.record(ev)
        if i % 1000 == 999:
            await asyncio.sleep(0)  # a server yields between requests
    recorded = time.perf_counter() - t0
    await audit.close()
    total = time.perf_counter() - t0
    assert audit.written == n, (audit.written, n)
    return {"record_us": recorded / n * 1e6, "writer_events_per_s": n / total}


async def paced(path: Path, rate: int, seconds: float, fsync: bool, audit_on: bool) -> float:
    """CPU seconds per wall second while recording `rate` events/s."""
    key = path.with_suffix(".key")
    audit = AuditLog(AuditSettings(fsync=fsync, enabled=audit_on, signing_key_file=key), path)
    await audit.start()
    tick_s, per_tick = 0.01, max(1, rate // 100)
    cpu0, t0 = time.process_time(), time.perf_counter()
    i, next_tick = 0, t0
    while time.perf_counter() - t0 < seconds:
        for _ in range(per_tick):
            audit.record(event(i))
            i += 1
        next_tick += tick_s
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    await audit.close()
    return (time.process_time() - cpu0) / (time.perf_counter() - t0)


def verify_rate(path: Path) -> float:
    t0 = time.perf_counter()
    result = verify(path)
    assert result.ok, result.broken
    return result.entries / (time.perf_counter() - t0)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(f"machine: {procs.machine_note()}")
    watch = procs.CpuWatch()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for fsync in (False, True):
            name = "fsync" if fsync else "no-fsync"
            log = Path(d) / f"{name}.jsonl"
            row = await burst(log, args.n, fsync)
            row["verify_entries_per_s"] = verify_rate(log)
            base = await paced(Path(d) / "off.jsonl", args.rate, args.seconds, fsync, False)
            on = await paced(Path(d) / f"{name}-paced.jsonl", args.rate, args.seconds, fsync, True)
            row["paced_cpu_cores_added"] = on - base
            results[name] = row
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            print(
                f"{name:9} record() {r['record_us']:.2f} µs/call | writer "
                f"{r['writer_events_per_s']:,.0f} events/s | at {args.rate}/s audit adds "
                f"{r['paced_cpu_cores_added'] * 100:.1f}% of a core | verify "
                f"{r['verify_entries_per_s']:,.0f} entries/s"
            )
    print(procs.noise_note(watch.foreign_cores()))


if __name__ == "__main__":
    asyncio.run(main())
