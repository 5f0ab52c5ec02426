"""The GPU proof: the real gateway driving llama-server (CUDA) on generated models of several GiB.

Run by run.sh after it builds llama-server; prints, for each (model, context per slot, slots,
KV type), the GPU memory the scheduler planned (the estimate, with gpu.context_overhead_bytes)
next to NVML's per-process figure and the CUDA buffers llama.cpp logged; then a partial offload
into a device left with less room than the model needs (a ballast process holds the rest), a
split where the machine has several GPUs, an eviction when the device is full, and the number of
out-of-memory failures (the goal: zero). Results also go to OUT/gpu_proof.json.

    python bench/gpu/proof.py --server-bin build/bin/llama-server [--work DIR] [--out DIR]
    python bench/gpu/proof.py --write-models [--work DIR]      # what run.sh does first
    python bench/gpu/proof.py --dry-run                         # no GPU, no build (see below)

--dry-run runs the same scenarios here: small models, the xllamacpp engine on the CPU and the
simulated GPU monitor (devices sized to each scenario instead of a ballast; no per-process
figures, since nothing is on a GPU). It checks the script, not the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ml_offload.config import GpuSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gguf_shapes
from gguf_shapes import Q, Shape

MIB, GIB = 2**20, 2**30
RESERVE = 512 * MIB  # gpu.reserve_bytes
CONTEXT = GpuSettings().context_overhead_bytes  # the default, which the gateway runs with
LOAD_TIMEOUT_S = 240
OOM = re.compile(r"out of memory|cudaMalloc failed|failed to allocate|CUDA error", re.IGNORECASE)
CUDA_BUFFER = re.compile(r"\bCUDA(\d+) (?:model|KV|compute|output) buffer size =\s+([\d.]+) MiB")

# Several GiB each, zeros (llama.cpp loads and places them like trained weights).
BIG = (
    Shape(
        "llama8b-q4_0", "llama", 32, 4096, 32, 8, 14336, 128256, qtype=Q.Q4_0, output_qtype=Q.Q6_K
    ),
    Shape("llama3b-f16", "llama", 28, 3072, 24, 8, 8192, 128256, head_dim=128),
    Shape(
        "qwen3moe-q8_0",
        "qwen3moe",
        16,
        2048,
        32,
        4,
        6144,
        151936,
        head_dim=128,
        n_expert=48,
        n_expert_used=8,
        n_ff_exp=768,
        qtype=Q.Q8_0,
    ),
    Shape(
        "gemma3-q4_k",
        "gemma3",
        26,
        2560,
        8,
        4,
        10240,
        262144,
        head_dim=256,
        tied=True,
        sliding_window=1024,
        qtype=Q.Q4_K,
    ),
)
SMALL = tuple(s for s in gguf_shapes.SHAPES if s.name in ("llama-gqa-24L", "qwen3moe-16L"))
# (model, context per slot, slots, KV cache type)
ROWS = (
    ("llama8b-q4_0", 4096, 4, "f16"),
    ("llama8b-q4_0", 32768, 1, "q8_0"),
    ("llama3b-f16", 8192, 2, "f16"),
    ("llama3b-f16", 2048, 8, "q4_0"),
    ("qwen3moe-q8_0", 4096, 8, "q8_0"),
    ("gemma3-q4_k", 16384, 2, "f16"),
)
DRY_ROWS = (("llama-gqa-24L", 2048, 2, "f16"), ("qwen3moe-16L", 1024, 4, "q8_0"))


@dataclass
class Setup:
    dry: bool
    work: Path
    out: Path
    server_bin: Path | None
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def shapes(self) -> tuple[Shape, ...]:
        return SMALL if self.dry else BIG

    @property
    def rows(self) -> tuple[tuple[str, int, int, str], ...]:
        return DRY_ROWS if self.dry else ROWS

    def model_path(self, name: str) -> Path:
        return self.work / "models" / f"{name}.gguf"


def write_models(setup: Setup) -> None:
    (setup.work / "models").mkdir(parents=True, exist_ok=True)
    for shape in setup.shapes:
        path = setup.model_path(shape.name)
        if not path.exists():
            started = time.perf_counter()
            gguf_shapes.write_shape(shape, path.with_suffix(".tmp"), zeros=True)
            path.with_suffix(".tmp").rename(path)
            took = time.perf_counter() - started
            print(f"wrote {path.name}: {path.stat().st_size / GIB:.2f} GiB in {took:.0f} s")


def model_entry(setup: Setup, name: str, ctx: int, slots: int, kv: str) -> dict[str, Any]:
    """One [[models]] entry: a name per row, the KV type as the engine's flag."""
    args = ["-ctk", kv, "-ctv", kv]
    if setup.dry:  # xllamacpp takes key=value engine parameters
        kind = {"f16": 1, "q8_0": 8, "q4_0": 2}[kv]
        args = [f"cache_type_k={kind}", f"cache_type_v={kind}"]
    return {
        "name": f"{name}@{ctx}x{slots}-{kv}",
        "path": str(setup.model_path(name)),
        "ctx_size": ctx,
        "parallel": slots,
        "extra_args": args,
    }


# --- the gateway -------------------------------------------------------------------------


class Gateway:
    def __init__(self, setup: Setup, tag: str, models: list[dict[str, Any]], sim: list[int]):
        self.folder = setup.work / "gateways" / tag
        self.folder.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        config = self.folder / "config.toml"
        config.write_text(_config(setup, self.folder / "data", models, sim))
        log = (self.folder / "gateway.log").open("wb")
        argv = [sys.executable, "-m", "ml_offload.cli.main", "serve", "--config", str(config)]
        self.proc = subprocess.Popen(
            [*argv, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=LOAD_TIMEOUT_S)
        self.logs = self.folder / "data" / "logs"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.gateway_log()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not start: {self.gateway_log()[-2000:]}")

    def gateway_log(self) -> str:
        return (self.folder / "gateway.log").read_text(errors="replace")

    def load(self, name: str) -> dict[str, Any] | str:
        """The model's /vram/status entry once loaded, or why the load failed."""
        r = self.http.post(f"/models/{name}/load")
        if r.status_code != 200:
            return f"HTTP {r.status_code}: {r.text[:300]}"
        return self.placed(name) or "loaded but not in /vram/status"

    def placed(self, name: str) -> dict[str, Any] | None:
        for _ in range(20):  # NVML's per-process figure comes right after the load
            entry = next((m for m in self.vram()["models"] if m["name"] == name), None)
            if entry is None or entry.get("measured_bytes") or not entry.get("device_bytes"):
                return entry
            time.sleep(0.25)
        return entry

    def vram(self) -> dict[str, Any]:
        return dict(self.http.get("/vram/status").json())

    def estimate(self, name: str) -> dict[str, Any]:
        return dict(self.http.get(f"/models/{name}").json()["estimate"])

    def unload(self, name: str) -> None:
        self.http.post(f"/models/{name}/unload")

    def engine_log(self, name: str) -> str:
        logs = sorted(self.logs.glob("*.log")) if self.logs.exists() else []
        match = [p for p in logs if p.stem.startswith(re.sub(r"[^A-Za-z0-9._-]", "_", name))]
        return match[0].read_text(errors="replace") if match else ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.http.close()


def _config(setup: Setup, data: Path, models: list[dict[str, Any]], sim: list[int]) -> str:
    engine = (
        'kind = "xllamacpp"\nthreads = 2'
        if setup.dry
        else (f'kind = "llama-server"\nllama_server_bin = "{setup.server_bin}"')
    )
    if setup.dry:
        devices = ", ".join(f'{{name = "sim{i}", total_bytes = {b}}}' for i, b in enumerate(sim))
        gpu = f'monitor = "simulated"\nsimulated_devices = [{devices}]'
    else:
        gpu = 'monitor = "nvml"'
    lines = [
        f'[storage]\ndata_dir = "{data}"',
        f"[engine]\n{engine}",
        f"[gpu]\n{gpu}\nreserve_bytes = {RESERVE}",
        "[scheduler]\nreap_interval_s = 0.5",
    ]
    for m in models:
        lines.append("[[models]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in m.items()))
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a ballast that leaves a chosen amount of a real GPU free ----------------------------

BALLAST = r"""
import sys, torch
device, room = int(sys.argv[1]), int(sys.argv[2])
torch.cuda.set_device(device)
torch.empty(1, device="cuda")  # the context first: what is left is then free for real
free, _ = torch.cuda.mem_get_info()
held = torch.empty(max(free - room, 0), dtype=torch.uint8, device="cuda")
print("READY", torch.cuda.mem_get_info()[0], flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def ballast(setup: Setup, rooms: list[int]) -> Iterator[list[int]]:
    """Leave `rooms[i]` bytes free on device i (real GPUs); yields what NVML-free became."""
    if setup.dry:
        yield rooms
        return
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the image's own torch
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BALLAST, str(i), str(room)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, room in enumerate(rooms)
    ]
    try:
        left = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().split()
            if not line or line[0] != "READY":
                raise RuntimeError("the ballast could not hold GPU memory (is torch there?)")
            left.append(int(line[1]))
        yield left
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                assert p.stdin is not None
                p.stdin.close()
            p.wait(30)


def gpu_count(setup: Setup) -> int:
    if setup.dry:
        return 2
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
    )
    return len(out.stdout.split())


def device_total(setup: Setup) -> int:
    if setup.dry:
        return 64 * GIB
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[0]) * MIB


# --- scenarios -----------------------------------------------------------------------------


def check_oom(setup: Setup, gw: Gateway, names: list[str]) -> None:
    for name in names:
        hits = [ln for ln in gw.engine_log(name).splitlines() if OOM.search(ln)]
        if hits:
            setup.failures.append(f"{name}: {hits[0].strip()[:200]}")


def logged_gpu_bytes(log: str) -> int:
    """The CUDA buffers llama.cpp logged (model, KV, compute, output), all devices."""
    return sum(round(float(m[2]) * MIB) for m in CUDA_BUFFER.finditer(log))


def estimate_rows(setup: Setup) -> list[dict[str, Any]]:
    entries = [model_entry(setup, *row) for row in setup.rows]
    sim = [device_total(setup)]
    gw = Gateway(setup, "rows", entries, sim)
    out = []
    try:
        for entry in entries:
            name = entry["name"]
            placed = gw.load(name)
            if isinstance(placed, str):
                setup.failures.append(f"{name}: {placed}")
                out.append({"model": name, "failed": placed})
                continue
            planned = sum(placed["device_bytes"].values())
            measured = placed.get("measured_bytes")
            logged = logged_gpu_bytes(gw.engine_log(name))
            row = {
                "model": name,
                "gpu_layers": f"{placed['gpu_layers']}/{placed['layers']}",
                "planned_bytes": planned,
                "nvml_bytes": measured,
                "logged_cuda_bytes": logged,
                "error_pct": 100 * (planned - measured) / measured if measured else None,
                "context_bytes": measured - logged if measured and logged else None,
            }
            out.append(row)
            print_row(row)
            gw.unload(name)
        check_oom(setup, gw, [e["name"] for e in entries])
    finally:
        gw.stop()
    return out


def print_row(r: dict[str, Any]) -> None:
    def mib(n: int | None) -> str:
        return f"{n / MIB:9.0f}" if n else f"{'-':>9}"

    err = f"{r['error_pct']:+6.1f}%" if r.get("error_pct") is not None else f"{'-':>7}"
    print(
        f"{r['model']:<34} {r['gpu_layers']:>6} {mib(r['planned_bytes'])} "
        f"{mib(r['nvml_bytes'])} {err} {mib(r['logged_cuda_bytes'])} {mib(r['context_bytes'])}",
        flush=True,
    )


def partial_offload(setup: Setup, n_devices: int = 1) -> dict[str, Any]:
    """One device with room for ~60% of the model's layers: the rest stay on the CPU. With
    several devices, each with room for 60% of them: every layer offloaded, split over two."""
    name, ctx, slots, kv = setup.rows[2] if not setup.dry else setup.rows[0]
    entry = model_entry(setup, name, ctx, slots, kv)
    probe = Gateway(setup, f"probe{n_devices}", [entry], [device_total(setup)])
    try:
        est = probe.estimate(entry["name"])
    finally:
        probe.stop()
    layers = est["gpu_full_bytes"] - est["gpu_compute_bytes"]
    fixed = RESERVE + CONTEXT + est["gpu_compute_bytes"]  # what every device used pays
    room = fixed + int(0.6 * layers)
    kind = "split" if n_devices > 1 else "partial"
    with ballast(setup, [room] * n_devices) as free:
        gw = Gateway(setup, kind, [entry], [room] * n_devices)
        try:
            placed = gw.load(entry["name"])
            vram = gw.vram()
            check_oom(setup, gw, [entry["name"]])
        finally:
            gw.stop()
    result: dict[str, Any] = {
        "scenario": kind,
        "model": entry["name"],
        "room_bytes": room,  # per device, the reserve and the CUDA context included
        "free_before": free,
    }
    if isinstance(placed, str):
        setup.failures.append(f"{kind}: {placed}")
        result["failed"] = placed
        return result
    if n_devices > 1 and len(placed["device_bytes"]) < 2:
        setup.failures.append(f"split: placed on {placed['device_bytes']}, not over two devices")
    result.update(
        gpu_layers=f"{placed['gpu_layers']}/{placed['layers']}",
        device_bytes=placed["device_bytes"],
        nvml_bytes=placed.get("measured_bytes"),
        devices_after=[
            {"index": d["index"], "free_bytes": d["free_bytes"], "used_bytes": d["used_bytes"]}
            for d in vram["devices"]
        ],
    )
    return result


def eviction(setup: Setup) -> dict[str, Any]:
    """Room for either of two models, not both: loading the second evicts the first."""
    rows = setup.rows
    first = model_entry(setup, *rows[0])
    second = model_entry(setup, *(rows[4] if not setup.dry else rows[1]))
    probe = Gateway(setup, "probe-evict", [first, second], [device_total(setup)])
    try:
        sizes = [probe.estimate(e["name"])["gpu_full_bytes"] for e in (first, second)]
    finally:
        probe.stop()
    room = RESERVE + CONTEXT + int(1.15 * max(sizes))
    with ballast(setup, [room]) as free:
        gw = Gateway(setup, "evict", [first, second], [room])
        try:
            a, b = gw.load(first["name"]), gw.load(second["name"])
            loaded = [m["name"] for m in gw.vram()["models"]]
            state = gw.http.get(f"/models/{first['name']}").json().get("state")
            check_oom(setup, gw, [first["name"], second["name"]])
        finally:
            gw.stop()
    for what, placed in ((first["name"], a), (second["name"], b)):
        if isinstance(placed, str):
            setup.failures.append(f"eviction, {what}: {placed}")
    evicted = loaded == [second["name"]] and state == "stopped"
    if not evicted:
        setup.failures.append(f"eviction: loaded {loaded}, first model {state}")
    return {
        "scenario": "eviction",
        "free_before": free,
        "estimates": sizes,
        "loaded_after": loaded,
        "first_state": state,
        "evicted": evicted,
    }


def prove(setup: Setup) -> int:
    setup.out.mkdir(parents=True, exist_ok=True)
    write_models(setup)
    print(
        "\nmodel@ctx-per-slot x slots-kv      layers  planned     NVML  error    CUDA-log  "
        "context (MiB; planned = the estimate + gpu.context_overhead_bytes)"
    )
    results: dict[str, Any] = {"dry_run": setup.dry, "rows": estimate_rows(setup)}
    results["partial"] = partial_offload(setup)
    print("\npartial offload:", json.dumps(results["partial"]))
    n = gpu_count(setup)
    if n > 1:
        results["split"] = partial_offload(setup, n)
        print("split:", json.dumps(results["split"]))
    else:
        print("split: not run (one GPU)")
    results["eviction"] = eviction(setup)
    print("eviction:", json.dumps(results["eviction"]))
    results["failures"] = setup.failures
    (setup.out / "gpu_proof.json").write_text(json.dumps(results, indent=2))
    errors = [r["error_pct"] for r in results["rows"] if r.get("error_pct") is not None]
    if errors:
        print(f"\nestimate vs NVML: from {min(errors):+.1f}% to {max(errors):+.1f}%")
    print(f"out-of-memory and load failures: {len(setup.failures)}")
    for failure in setup.failures:
        print("  ", failure)
    return 1 if setup.failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-bin", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlo-gpu"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--write-models", action="store_true", help="only write the models")
    args = parser.parse_args()
    setup = Setup(args.dry_run, args.work, args.out or args.work / "out", args.server_bin)
    if args.write_models:
        write_models(setup)
        return 0
    if not setup.dry and (setup.server_bin is None or not setup.server_bin.exists()):
        parser.error("--server-bin: a llama-server built with CUDA (run.sh builds one)")
    return prove(setup)


if __name__ == "__main__":
    sys.exit(main())
