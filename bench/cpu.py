"""Gateway CPU time per request, idle memory and start-up time, A/B between source trees.

CPU per request is the figure that a busy machine leaves alone: the gateway process's user +
system CPU time (from /proc/PID/stat) over the requests it answered while wrk drove it. Each
``--src`` is a tree's ``src/`` folder (e.g. a `git worktree add /tmp/perf-base <commit>` of the
baseline); the gateways run one after another, interleaved over ``--rounds``, against one fake
upstream, with keys, rate limits, the audit log and metrics on (as ``overhead.py --secure``;
``--plain``: metrics only, as ``overhead.py``).

    python bench/cpu.py --src /tmp/perf-base/src --src src [--rounds 3] [--duration 4]
                        [--conns 16] [--plain] [--profile DIR]   # DIR: a py-spy profile per tree
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs
from fake_upstream import spawn
from loadgen import run_wrk, wrk_available
from overhead import BODY, CONFIG, SECURE

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def env_for(src: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(src).resolve())}


def mlo(src: str, *args: str) -> list[str]:
    del src
    return [sys.executable, "-c", "from ml_offload.cli.main import main; main()", *args]


def make_config(workdir: Path, upstream: str, src: str, plain: bool) -> tuple[Path, str]:
    cfg = workdir / "gateway.toml"
    cfg.write_text(
        CONFIG.format(data_dir=workdir / "data", upstream=upstream) + SECURE * (not plain)
    )
    if plain:
        return cfg, ""
    cmd = mlo(src, "keys", "create", "--config", str(cfg), "--name", "bench")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env_for(src)).stdout
    match = re.search(r"\bmlo-[A-Za-z0-9_-]{20,}", out)
    if match is None:
        raise RuntimeError(f"no key in the output of {' '.join(cmd)}: {out!r}")
    return cfg, match.group(0)


def one_round(src: str, upstream: str, args: argparse.Namespace, tag: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mlo-cpu-") as tmp:
        cfg, key = make_config(Path(tmp), upstream, src, args.plain)
        port = procs.free_port()
        cmd = mlo(src, "serve", "--config", str(cfg), "--port", str(port))
        log = Path(tmp) / "gw.log"
        t0 = time.perf_counter()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env_for(src)
            )
        url = f"http://127.0.0.1:{port}"
        ready = procs.wait_health(url + "/health", proc, 90)
        try:
            if ready is None:
                raise RuntimeError("gateway did not start:\n" + procs.tail(log))
            return measure(proc, url, key, ready - t0, args, tag)
        finally:
            procs.stop_group(proc)


def measure(
    proc: subprocess.Popen[bytes],
    url: str,
    key: str,
    startup_s: float,
    args: argparse.Namespace,
    tag: str,
) -> dict[str, float]:
    pid = procs.listener_pid(int(url.rsplit(":", 1)[1])) or proc.pid
    time.sleep(1.0)
    rss_idle = (procs.status_kb(pid, "VmRSS") or 0) / 1024
    target = url + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    run_wrk(target, BODY, args.conns, 1.0, headers=headers)  # warm-up
    spy = start_profile(pid, args, tag)
    c0 = cpu_s(pid)
    res = run_wrk(target, BODY, args.conns, args.duration, headers=headers)
    c1 = cpu_s(pid)
    stop_profile(spy)
    if res.requests == 0:
        raise RuntimeError(f"no successful requests through {url}")
    return {
        "cpu_ms_per_req": (c1 - c0) * 1000 / res.requests,
        "rps": res.rps,
        "p50_ms": res.p50_ms,
        "p99_ms": res.p99_ms,
        "errors": res.errors,
        "rss_idle_mb": rss_idle,
        "startup_s": startup_s,
    }


def start_profile(pid: int, args: argparse.Namespace, tag: str) -> subprocess.Popen[bytes] | None:
    if not args.profile:
        return None
    spy = shutil.which("py-spy") or "py-spy"
    out = Path(args.profile) / f"{tag}.txt"
    cmd = [spy, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", "200", "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(2)
        spy.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description="gateway CPU per request, A/B between trees")
    ap.add_argument("--src", action="append", required=True, help="a tree's src/ folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--plain", action="store_true", help="no key, limits or audit log")
    ap.add_argument("--profile", help="folder for py-spy raw profiles (one per tree)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not wrk_available():
        sys.exit("cpu: wrk not found (apt-get install -y wrk)")
    watch = procs.CpuWatch()
    upstream, up_proc = spawn()
    results: dict[str, list[dict[str, float]]] = {s: [] for s in args.src}
    try:
        for r in range(args.rounds):
            for i, src in enumerate(args.src):
                tag = f"tree{i}" if args.rounds == 1 or r else f"tree{i}-r0"
                results[src].append(one_round(src, upstream, args, tag))
    finally:
        up_proc.terminate()
        up_proc.wait(5)
    report(results, procs.noise_note(watch.foreign_cores()), args.json)


def report(results: dict[str, list[dict[str, float]]], noise: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"noise": noise, "results": results}, indent=2))
        return
    print(noise)
    keys = ["cpu_ms_per_req", "rps", "p50_ms", "p99_ms", "rss_idle_mb", "startup_s"]
    print("| tree | " + " | ".join(keys) + " |")
    print("| --- |" + " ---: |" * len(keys))
    for src, runs in results.items():
        cells = []
        for k in keys:
            vals = [x[k] for x in runs]
            cells.append(f"{statistics.median(vals):.3f} ({min(vals):.3f}–{max(vals):.3f})")
        print(f"| {src} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
