"""Load generators for the benchmarks: wrk (with a Lua POST script) or a lean raw-socket client.

The raw-socket client (asyncio streams on uvloop, precomputed request bytes, keep-alive) also
measures streaming time to first byte: the time from sending a request to the first ``data:``
event of the SSE body, which wrk cannot see.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,' ..
    '"status_errors":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Result:
    """One measured cell: rps over the measured window, latency percentiles in ms."""

    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    generator: str
    ttfb_p50_ms: float | None = None
    ttfb_p99_ms: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, object]:
        d = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}
        return {**d, "rps": round(self.rps, 1)}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


# --- wrk ---------------------------------------------------------------------------------------


def wrk_script(body: bytes, headers: dict[str, str] | None = None) -> str:
    extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n' + extra + WRK_DONE
    )


def run_wrk(
    url: str,
    body: bytes,
    connections: int,
    duration_s: float,
    threads: int = 1,
    headers: dict[str, str] | None = None,
) -> Result:
    """Run wrk once against ``url`` (full URL with path) and parse the Lua summary line."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(body, headers))
    try:
        cmd = [
            "wrk",
            "-t",
            str(min(threads, connections)),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(duration_s))}s",
            "--timeout",
            "10s",
            "-s",
            f.name,
            url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30)
    finally:
        Path(f.name).unlink(missing_ok=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out.stdout}\n{out.stderr}")
    d = json.loads(line.split(" ", 1)[1])
    ok = d["requests"] - d["status_errors"]  # wrk counts non-2xx answers as requests too
    return Result(
        ok, d["errors"], d["duration_us"] / 1e6, d["p50_us"] / 1000, d["p99_us"] / 1000, "wrk"
    )


# --- raw-socket client -------------------------------------------------------------------------


def request_bytes(url: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    parts = urlsplit(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nAccept: */*\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool, float | None]:
    """Read one response; returns (status, keep_alive, perf_counter time of first ``data:``)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    keep_alive = headers.get("connection", "").lower() != "close"
    first_data: float | None = None
    async for piece in _body_pieces(reader, headers):
        if first_data is None and b"data:" in piece:
            first_data = time.perf_counter()
    return status, keep_alive, first_data


async def _body_pieces(reader: asyncio.StreamReader, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                return
            yield (await reader.readexactly(size + 2))[:-2]
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            piece = await reader.read(min(left, 65536))
            if not piece:
                raise ConnectionError("body cut short")
            left -= len(piece)
            yield piece
    else:  # read to EOF
        while piece := await reader.read(65536):
            yield piece


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0


async def _worker(
    url: str, payload: bytes, until: float, record_from: float, tally: _Tally, gap_s: float
) -> None:
    parts = urlsplit(url)
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while (now := time.perf_counter()) < until:
        if gap_s:
            await asyncio.sleep(gap_s)  # think time: every request meets an idle server
        try:
            if conn is None:
                conn = await asyncio.open_connection(parts.hostname, parts.port)
            reader, writer = conn
            t0 = time.perf_counter()
            writer.write(payload)
            status, keep_alive, first = await read_response(reader)
            t1 = time.perf_counter()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            tally.errors += now >= record_from
            _close(conn)
            conn = None
            await asyncio.sleep(0.01)
            continue
        if not keep_alive:
            _close(conn)
            conn = None
        if t0 < record_from:
            continue
        if status >= 400:
            tally.errors += 1
            continue
        tally.latencies.append(t1 - t0)
        if first is not None:
            tally.ttfbs.append(first - t0)


def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if conn is not None:
        conn[1].close()


async def run_py(
    url: str,
    body: bytes,
    connections: int,
    duration_s: float,
    warmup_s: float = 0.0,
    gap_s: float = 0.0,
    headers: dict[str, str] | None = None,
) -> Result:
    """Closed-loop load from ``connections`` keep-alive sockets, each pausing ``gap_s`` between
    requests; warm-up requests are not counted."""
    tally = _Tally()
    start = time.perf_counter()
    record_from = start + warmup_s
    until = record_from + duration_s
    payload = request_bytes(url, body, headers)
    await asyncio.gather(
        *(_worker(url, payload, until, record_from, tally, gap_s) for _ in range(connections))
    )
    lat = sorted(x * 1000 for x in tally.latencies)
    ttfb = sorted(x * 1000 for x in tally.ttfbs)
    return Result(
        len(lat),
        tally.errors,
        duration_s,
        percentile(lat, 50),
        percentile(lat, 99),
        "python-raw",
        percentile(ttfb, 50) if ttfb else None,
        percentile(ttfb, 99) if ttfb else None,
    )


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()
