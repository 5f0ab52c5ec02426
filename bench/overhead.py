"""Gateway overhead: ml-offload in front of a fake llama.cpp upstream vs the upstream directly.

One run starts the fake upstream and the gateway (``mlo serve``) as subprocesses, then measures at
1, 16 and 64 connections: non-streaming chat completions (req/s, p50/p99) and streaming time to
first ``data:`` event (p50/p99), direct and through the gateway; plus the gateway's start-up time
(spawn to /health 200) and its RSS at idle and after load. Figures are printed, never asserted.

    python bench/overhead.py [--duration 5] [--warmup 1] [--conns 1,16,64] [--json]
    python bench/overhead.py --direct-only      # only the upstream half (no gateway needed)
    python bench/overhead.py --secure           # with a key, rate limits and the audit log on
    python bench/overhead.py --tracing          # exporting OTLP traces (all requests) too
    python bench/overhead.py --compare          # and LiteLLM's proxy beside it (bench/peers.sh)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers
import procs
from fake_upstream import spawn
from loadgen import Result, new_loop, run_py, run_wrk, wrk_available

MESSAGES = [{"role": "user", "content": "Say hello."}]
BODY = orjson.dumps({"model": "fake", "messages": MESSAGES, "max_tokens": 16})
STREAM_BODY = orjson.dumps(
    {
        "model": "fake",
        "messages": MESSAGES,
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
)
# Anthropic's Messages API, streamed: passed through to a deployment that speaks it (issue 15).
MESSAGES_BODY = orjson.dumps(
    {"model": "fake-claude", "messages": MESSAGES, "max_tokens": 16, "stream": True}
)
CONFIG = """demo_model = false
scan_models_dir = false
[storage]
data_dir = "{data_dir}"
[server]
log_level = "warning"
[[models]]
name = "fake"
url = "{upstream}"
parallel = 256
[[models]]
name = "fake-claude"
url = "{upstream}"
backend = "anthropic"
api_key = "bench"
parallel = 256
"""
SECURE = """[security]
auth = "required"
[security.limits]
default_rpm = 100000000
default_tpm = 100000000000
[security.audit]
enabled = true
"""


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    pid: int  # the process that listens
    startup_s: float
    log: Path
    rss_idle_mb: float = 0.0
    rss_after_mb: float = 0.0
    rss_peak_mb: float = 0.0
    tree_rss_after_mb: float = 0.0
    notes: list[str] = field(default_factory=list)
    modes_ok: list[str] = field(default_factory=list)


TRACING = """[tracing]
otlp_endpoint = "{receiver}"
"""


def start_gateway(
    upstream: str,
    workdir: Path,
    timeout_s: float = 90.0,
    secure: bool = False,
    traces_to: str | None = None,
) -> Gateway:
    cfg = workdir / "gateway.toml"
    cfg.write_text(
        CONFIG.format(data_dir=workdir / "data", upstream=upstream)
        + (SECURE if secure else "")
        + (TRACING.format(receiver=traces_to) if traces_to else "")
    )
    if secure:
        HEADERS["Authorization"] = "Bearer " + create_key(cfg)
    port = procs.free_port()
    log = workdir / "gateway.log"
    cmd = [*procs.mlo_command(), "serve", "--config", str(cfg), "--port", str(port)]
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    ready = procs.wait_health(url + "/health", proc, timeout_s)
    if ready is None:
        procs.stop_group(proc)
        raise RuntimeError(
            f"gateway did not answer /health 200 ({' '.join(cmd)}):\n" + procs.tail(log)
        )
    pid = procs.listener_pid(port) or proc.pid
    return Gateway(url, proc, pid, ready - t0, log)


MODES = {"json": BODY, "stream": STREAM_BODY, "messages": MESSAGES_BODY}
PATHS = {
    "json": "/v1/chat/completions",
    "stream": "/v1/chat/completions",
    "messages": "/v1/messages",
}
STREAMED = ("stream", "messages")  # their figure is the time to the first SSE data event
HEADERS: dict[str, str] = {}  # sent to the gateway (a key, with --secure); not to the upstream


def create_key(cfg: Path) -> str:
    """A key made with `mlo keys create` (the key is printed once, on its own line)."""
    cmd = [*procs.mlo_command(), "keys", "create", "--config", str(cfg), "--name", "bench"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"\bmlo-[A-Za-z0-9_-]{20,}", out)
    if match is None:
        raise RuntimeError(f"no key in the output of {' '.join(cmd)}: {out!r}")
    return match.group(0)


def check(url: str, mode: str, auth: dict[str, str] | None = None) -> str | None:
    """One request of ``mode`` (json, stream or messages); a problem described, or None."""
    import urllib.request

    headers = {"Content-Type": "application/json", **(HEADERS if auth is None else auth)}
    req = urllib.request.Request(url + PATHS[mode], data=MODES[mode], headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = resp.read()
            ctype = resp.headers.get("content-type", "")
    except Exception as e:  # reported, not handled
        return f"{mode}: {e!r} {getattr(e, 'read', lambda: b'')()[:200]!r}"
    if mode == "stream" and (b"data: [DONE]" not in data or "event-stream" not in ctype):
        return f"stream answer looks wrong ({ctype}): {data[:200]!r}"
    if mode == "messages" and (b"event: message_stop" not in data or "event-stream" not in ctype):
        return f"messages stream looks wrong ({ctype}): {data[:200]!r}"
    if mode == "json" and b'"chat.completion"' not in data:
        return f"json answer looks wrong: {data[:200]!r}"
    return None


def load(
    url: str, mode: str, conns: int, args: argparse.Namespace, headers: dict[str, str]
) -> Result:
    """One cell. ``mode`` is json or stream, with ``_sparse`` for one request per gap."""
    target = url + PATHS[mode.removesuffix("_sparse")]
    body = MODES[mode.removesuffix("_sparse")]
    gap_s = args.gap_ms / 1000 if mode.endswith("_sparse") else 0.0
    if body is BODY and not gap_s and args.generator == "wrk":
        run_wrk(target, BODY, conns, args.warmup, headers=headers)  # warm-up, discarded
        return run_wrk(target, BODY, conns, args.duration, headers=headers)
    loop = new_loop()
    try:
        return loop.run_until_complete(
            run_py(target, body, conns, args.duration, args.warmup, gap_s, headers)
        )
    finally:
        loop.close()


def measure(
    url: str,
    args: argparse.Namespace,
    modes: tuple[str, ...] = tuple(MODES),
    headers: dict[str, str] | None = None,
) -> dict[str, dict[int, Result]]:
    """Closed-loop cells at each connection count, then sparse cells (1 connection, idle gaps)."""
    h = headers or {}
    out = {mode: {c: load(url, mode, c, args, h) for c in args.conns} for mode in modes}
    if args.gap_ms > 0:
        out |= {f"{mode}_sparse": {1: load(url, f"{mode}_sparse", 1, args, h)} for mode in modes}
    return out


def rows(
    direct: dict[str, dict[int, Result]], gw: dict[str, dict[int, Result]] | None
) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for mode, by_conn in direct.items():
        for c, d in by_conn.items():
            g = (gw or {}).get(mode, {}).get(c)
            row: dict[str, object] = {"mode": mode, "connections": c, "direct": d.as_dict()}
            if g is not None:
                row["gateway"] = g.as_dict()
                row["ratio"] = round(g.rps / d.rps, 3) if d.rps else None
                row["added_p50_ms"] = round(g.p50_ms - d.p50_ms, 3)
                row["added_p99_ms"] = round(g.p99_ms - d.p99_ms, 3)
                if d.ttfb_p50_ms is not None and g.ttfb_p50_ms is not None:
                    row["added_ttfb_p50_ms"] = round(g.ttfb_p50_ms - d.ttfb_p50_ms, 3)
                    row["added_ttfb_p99_ms"] = round((g.ttfb_p99_ms or 0) - (d.ttfb_p99_ms or 0), 3)
            out.append(row)
    return out


def _num(row: dict[str, object] | None, *keys: str) -> float | None:
    """A number nested in a result row (``_num(row, "gateway", "rps")``), or None."""
    value: object = row
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def targets(table: list[dict[str, object]], gw: Gateway | None) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the figures the design aims at."""
    if gw is None:
        return []
    get = {(r["mode"], r["connections"]): r for r in table}
    checks = [
        ("added p50 < 1 ms at 1 conn", _num(get.get(("json", 1)), "added_p50_ms"), "ms", 1.0),
        (
            "added TTFB p50 < 1 ms at 1 conn",
            _num(get.get(("stream", 1)), "added_ttfb_p50_ms"),
            "ms",
            1.0,
        ),
        (
            "added /v1/messages passthrough TTFB p50 <= 1 ms at 1 conn",
            _num(get.get(("messages", 1)), "added_ttfb_p50_ms"),
            "ms",
            1.0,
        ),
        (
            "> 1500 req/s at 16 conns",
            _num(get.get(("json", 16)), "gateway", "rps"),
            "req/s",
            -1500.0,
        ),
        ("idle RSS < 80 MB", gw.rss_idle_mb, "MB", 80.0),
    ]
    out = []
    for name, value, unit, bound in checks:
        if value is None:
            out.append((name, "not measured", False))
        else:  # a negative bound means "more than"
            met = value > -bound if bound < 0 else value < bound
            spec = {"ms": ".3f", "req/s": ".0f", "MB": ".1f"}[unit]
            out.append((name, f"{value:{spec}} {unit}", met))
    return out


def fmt(x: object, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def print_report(report: dict[str, object]) -> None:
    print(f"machine: {report['machine']}\nnoise: {report['noise']}")
    on = [name for name in ("secure", "tracing") if report.get(name)]
    print("gateway: metrics" + "".join(f", {name}" for name in on))
    print(
        f"load generator: {report['generator_json']} (non-streaming), "
        f"{report['generator_stream']} (streaming TTFB); "
        f"{report['duration_s']} s measured after {report['warmup_s']} s warm-up per cell"
    )
    head = (
        f"{'mode':9} {'conn':>4} | {'direct r/s':>10} {'gw r/s':>8} {'ratio':>6} | "
        f"{'d p50':>7} {'gw p50':>7} {'+p50':>7} | {'d p99':>7} {'gw p99':>7} {'+p99':>7} "
        "| err"
    )
    print(head)
    print("-" * len(head))
    for r in report["rows"]:  # type: ignore[attr-defined]
        d, g = r["direct"], r.get("gateway") or {}
        base = r["mode"].removesuffix("_sparse")
        key = "ttfb_" if base in STREAMED else ""
        mode = {"stream": "ttfb", "messages": "msgs"}.get(base, base)
        mode += "~gap" if r["mode"].endswith("_sparse") else ""
        print(
            f"{mode:9} {r['connections']:>4} | {d['rps']:>10.0f} {fmt(g.get('rps'), '.0f'):>8} "
            f"{fmt(r.get('ratio'), '.2f'):>6} | {fmt(d[key + 'p50_ms']):>7} "
            f"{fmt(g.get(key + 'p50_ms')):>7} {fmt(r.get('added_' + key + 'p50_ms')):>7} | "
            f"{fmt(d[key + 'p99_ms']):>7} {fmt(g.get(key + 'p99_ms')):>7} "
            f"{fmt(r.get('added_' + key + 'p99_ms')):>7} | {d['errors']}/{g.get('errors', '-')}"
        )
    print(
        "(json: full-response latency in ms; ttfb: time to the first SSE data event in ms; msgs:"
        " the same for Anthropic's /v1/messages passed through; r/s ="
        f" streams/s; ~gap: one connection pausing {report['gap_ms']:.0f} ms between requests,"
        " so each meets an idle server)"
    )
    gw = report.get("gateway")
    if isinstance(gw, dict):
        print(
            f"gateway: start-up {gw['startup_s']:.2f} s (spawn -> /health 200); "
            f"listening pid {gw['pid']}; RSS idle {gw['rss_idle_mb']:.1f} MB, after load "
            f"{gw['rss_after_mb']:.1f} MB (peak {gw['rss_peak_mb']:.1f} MB, "
            f"process tree {gw['tree_rss_after_mb']:.1f} MB)"
        )
        for note in gw["notes"]:
            print(f"note: {note}")
    for name, value, met in report.get("targets", []):  # type: ignore[attr-defined]
        print(f"target {name:34} measured {value:>12}  {'met' if met else 'MISSED'}")
    for peer in report.get("peers") or []:  # type: ignore[attr-defined]
        print_peer(peer, report["rows"])  # type: ignore[arg-type]


def print_peer(peer: dict[str, Any], ours: list[dict[str, object]]) -> None:
    """A peer's cells beside ml-offload's, and the ratio (ml-offload / peer)."""
    mine = {(r["mode"], r["connections"]): r.get("gateway") or {} for r in ours}
    print(
        f"\n{peer['name']}: start-up {peer['startup_s']:.2f} s; RSS idle "
        f"{peer['rss_idle_mb']:.1f} MB, after load {peer['rss_after_mb']:.1f} MB"
    )
    head = f"{'peer r/s':>9} {'mlo r/s':>8} {'x':>6} | {'peer p50':>9} {'mlo p50':>8}"
    print(f"{'mode':9} {'conn':>4} | {head}")
    for row in peer["rows"]:
        r, g = row["result"], mine.get((row["mode"], row["connections"]), {})
        key = "ttfb_" if row["mode"].removesuffix("_sparse") in STREAMED else ""
        ratio = g.get("rps", 0) / r["rps"] if r["rps"] and g.get("rps") else None
        print(
            f"{row['mode']:9} {row['connections']:>4} | {r['rps']:>9.0f} "
            f"{fmt(g.get('rps'), '.0f'):>8} {fmt(ratio, '.1f'):>6} | "
            f"{fmt(r.get(key + 'p50_ms')):>9} {fmt(g.get(key + 'p50_ms')):>8}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description="gateway overhead vs direct upstream")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell")
    ap.add_argument("--conns", default="1,16,64", help="comma-separated connection counts")
    ap.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument(
        "--gap-ms",
        type=float,
        default=50.0,
        help="also measure 1 connection with this pause between requests (0: skip)",
    )
    ap.add_argument("--direct-only", action="store_true", help="skip the gateway")
    ap.add_argument(
        "--secure", action="store_true", help="gateway with a key, rate limits and audit log on"
    )
    ap.add_argument(
        "--tracing", action="store_true", help="gateway exporting OTLP traces to a receiver"
    )
    ap.add_argument(
        "--compare", action="store_true", help="also measure LiteLLM's proxy (bench/peers.sh)"
    )
    ap.add_argument("--peers", type=Path, default=peers.DEFAULT_VENV, help="peers' venv")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    args.conns = [int(c) for c in args.conns.split(",")]
    if args.generator == "auto":
        args.generator = "wrk" if wrk_available() else "python"
        if args.generator == "python":
            print(
                "wrk not found (apt-get install -y wrk); using the python raw-socket client",
                file=sys.stderr,
            )
    try:
        report = run(args)
    except RuntimeError as e:
        sys.exit(f"overhead: {e}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def run(args: argparse.Namespace) -> dict[str, object]:
    """Gateway first (start-up, idle RSS on a quiet machine, fail fast), then direct, then via."""
    machine = procs.machine_note()  # before we load the machine ourselves
    watch = procs.CpuWatch()
    upstream, up_proc = spawn()
    receiver = None
    if args.tracing:  # (bench/tracing.py imports the tracing settings: only when asked)
        from tracing import otlp_receiver

        receiver = otlp_receiver()
    gw: Gateway | None = None
    gw_results = None
    try:
        with tempfile.TemporaryDirectory(prefix="mlo-bench-") as tmp:
            if not args.direct_only:
                traces_to = receiver[0] if receiver else None
                gw = start_gateway(upstream, Path(tmp), secure=args.secure, traces_to=traces_to)
            try:
                if gw is not None:
                    settle_and_check(gw)
                direct = measure(upstream, args)
                if gw is not None:
                    gw_results = measure_gateway(gw, args)
            finally:
                if gw is not None:
                    procs.stop_group(gw.proc)
            compared = measure_peers(upstream, Path(tmp), args) if args.compare else []
    finally:
        for proc in (up_proc, receiver[1] if receiver else None):
            if proc is not None:
                proc.terminate()
                proc.wait(5)
    table = rows(direct, gw_results)
    return {
        "machine": machine,
        "noise": procs.noise_note(watch.foreign_cores()),
        "generator_json": "wrk -t1" if args.generator == "wrk" else "python-raw",
        "generator_stream": "python-raw (uvloop)",
        "secure": args.secure,
        "tracing": args.tracing,
        "duration_s": args.duration,
        "gap_ms": args.gap_ms,
        "warmup_s": args.warmup,
        "rows": table,
        "gateway": None
        if gw is None
        else {
            k: getattr(gw, k)
            for k in (
                "pid",
                "startup_s",
                "rss_idle_mb",
                "rss_after_mb",
                "rss_peak_mb",
                "tree_rss_after_mb",
                "notes",
            )
        },
        "targets": targets(table, gw),
        "peers": compared,
    }


def measure_peers(upstream: str, workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each peer gateway in front of the same upstream, measured as the gateway was (json and
    stream modes: the peers have no Anthropic passthrough to compare)."""
    peer = peers.litellm(args.peers, upstream, workdir)
    try:
        modes = tuple(m for m in ("json", "stream") if check(peer.url, m, peer.headers) is None)
        if not modes:
            problem = check(peer.url, "json", peer.headers)
            raise RuntimeError(f"{peer.name} answered neither mode: {problem}")
        results = measure(peer.url, args, modes, peer.headers)
        rss_after = (procs.status_kb(peer.pid, "VmRSS") or 0) / 1024
    finally:
        procs.stop_group(peer.proc)
    rows_ = [
        {"mode": mode, "connections": c, "result": r.as_dict()}
        for mode, by_conn in results.items()
        for c, r in by_conn.items()
    ]
    return [
        {
            "name": peer.name,
            "startup_s": peer.startup_s,
            "rss_idle_mb": peer.rss_idle_mb,
            "rss_after_mb": rss_after,
            "rows": rows_,
        }
    ]


def settle_and_check(gw: Gateway) -> None:
    time.sleep(1.0)  # let start-up work settle before reading idle RSS
    gw.rss_idle_mb = (procs.status_kb(gw.pid, "VmRSS") or 0) / 1024
    if gw.pid != gw.proc.pid:
        gw.notes.append(f"mlo pid {gw.proc.pid} is not the listener; measured pid {gw.pid}")
    for mode in MODES:
        problem = check(gw.url, mode)
        if problem is None:
            gw.modes_ok.append(mode)
        else:
            last = procs.tail(gw.log, 1)
            gw.notes.append(
                f"{mode} not measured through the gateway, sanity check failed: "
                f"{problem}; gateway log ends: {last[:300]}"
            )


def measure_gateway(gw: Gateway, args: argparse.Namespace) -> dict[str, dict[int, Result]]:
    results = measure(gw.url, args, tuple(gw.modes_ok), HEADERS)
    gw.rss_after_mb = (procs.status_kb(gw.pid, "VmRSS") or 0) / 1024
    gw.rss_peak_mb = (procs.status_kb(gw.pid, "VmHWM") or 0) / 1024
    gw.tree_rss_after_mb = procs.tree_rss_mb(gw.proc.pid)
    return results


if __name__ == "__main__":
    main()
