"""Upstream client choice: httpx.AsyncClient vs aiohttp.ClientSession, pooled and keep-alive.

Both clients run in this one process (uvloop) against the fake upstream (a subprocess), the way
the gateway would use them: non-streaming chat-completion POSTs at 1 and 16 concurrent requests,
plus a streaming row (read the SSE body to the end). Prints requests/s and p50/p99 latency.

    python bench/clients.py [--duration 3] [--warmup 0.5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs
from fake_upstream import spawn
from loadgen import Result, new_loop, percentile

BODY = {"model": "fake", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
Send = Callable[[], Awaitable[int]]


def httpx_sender(client: httpx.AsyncClient, url: str, stream: bool) -> Send:
    body = orjson.dumps({**BODY, "stream": stream})
    headers = {"Content-Type": "application/json"}

    async def send() -> int:
        if not stream:
            resp = await client.post(url, content=body, headers=headers)
            orjson.loads(resp.content)
            return resp.status_code
        async with client.stream("POST", url, content=body, headers=headers) as resp:
            async for _ in resp.aiter_bytes():
                pass
            return resp.status_code

    return send


def aiohttp_sender(session: aiohttp.ClientSession, url: str, stream: bool) -> Send:
    body = orjson.dumps({**BODY, "stream": stream})
    headers = {"Content-Type": "application/json"}

    async def send() -> int:
        async with session.post(url, data=body, headers=headers) as resp:
            if stream:
                async for _ in resp.content.iter_any():
                    pass
            else:
                orjson.loads(await resp.read())
            return resp.status

    return send


async def measure(
    send: Send, concurrency: int, duration_s: float, warmup_s: float, name: str
) -> Result:
    latencies: list[float] = []
    errors = 0
    record_from = time.perf_counter() + warmup_s
    until = record_from + duration_s

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            try:
                status = await send()
            except (httpx.HTTPError, aiohttp.ClientError):
                status = 599
            if t0 >= record_from:
                if status >= 400:
                    errors += 1
                else:
                    latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = sorted(latencies)
    return Result(len(lat), errors, duration_s, percentile(lat, 50), percentile(lat, 99), name)


async def run_all(base: str, duration_s: float, warmup_s: float) -> list[dict[str, object]]:
    url = base + "/v1/chat/completions"
    rows: list[dict[str, object]] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with (
        httpx.AsyncClient(limits=limits, timeout=30) as hx,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), timeout=aiohttp.ClientTimeout(total=30)
        ) as ah,
    ):
        cases = [(False, 1), (False, 16), (True, 16)]
        for stream, conc in cases:
            for name, send in (
                ("httpx", httpx_sender(hx, url, stream)),
                ("aiohttp", aiohttp_sender(ah, url, stream)),
            ):
                r = await measure(send, conc, duration_s, warmup_s, name)
                rows.append({"client": name, "stream": stream, "concurrency": conc, **r.as_dict()})
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    print(
        f"{'client':8} {'mode':10} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'err':>4}"
    )
    for r in rows:
        mode = "stream" if r["stream"] else "json"
        print(
            f"{r['client']!s:8} {mode:10} {r['concurrency']!s:>4} {r['rps']:>9.0f} "
            f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['errors']!s:>4}"
        )
    by = {(r["client"], r["stream"], r["concurrency"]): float(r["rps"]) for r in rows}  # type: ignore[arg-type]
    for stream, conc in sorted({(r["stream"], r["concurrency"]) for r in rows}, key=str):
        a, h = by[("aiohttp", stream, conc)], by[("httpx", stream, conc)]
        mode = "stream" if stream else "json"
        print(f"aiohttp/httpx throughput, {mode} x{conc}: {a / h:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description="httpx vs aiohttp as the upstream client")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds measured per cell")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    machine, watch = procs.machine_note(), procs.CpuWatch()
    base, proc = spawn()
    try:
        loop = new_loop()
        rows = loop.run_until_complete(run_all(base, args.duration, args.warmup))
        loop.close()
    finally:
        proc.terminate()
        proc.wait(5)
    meta = {
        "python": sys.version.split()[0],
        "httpx": httpx.__version__,
        "aiohttp": aiohttp.__version__,
        "event_loop": type(loop).__module__,
        "machine": machine,
        "noise": procs.noise_note(watch.foreign_cores()),
    }
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
    else:
        print(f"machine: {meta.pop('machine')}\nnoise: {meta.pop('noise')}")
        print(f"upstream: fake_upstream (subprocess); {meta}")
        print_table(rows)


if __name__ == "__main__":
    main()
