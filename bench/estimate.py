"""Estimate accuracy: `vram.estimate_memory` next to the buffers llama.cpp reports at load.

Every model the engine loads here (CPU backend, xllamacpp, default settings otherwise): the
SmolLM2 demo GGUF and the shapes of `gguf_shapes.py` (f16, q8_0, Q4_0, Q4_K; GQA, sliding
window, experts, tied and untied heads; written to a temporary folder), over a sample of the grid
in CASES (context per slot 256..32k, 1..8 slots, f16/q8_0/q4_0 caches, flash attention on and
off, embeddings, the gateway's own launch). Each load runs in a subprocess at verbosity 4, which
makes llama.cpp print its `model` (CPU_REPACK copies included), `KV`, `compute` and `output`
buffer sizes. The error is (estimate - reported) / reported total; the worst under- and
over-estimates are printed last (the goal: -1% to +5%). The Ollama port in xllamacpp
(`estimate_gpu_layers`, its full-offload total less the fixed 512 MiB it reserves per GPU) is
shown for comparison.

    python bench/estimate.py [--json] [--quick | --all] [--model NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_shapes

from ml_offload.gguf import demo_model_path, host_repack_family, read_gguf_info, repack_bytes
from ml_offload.vram import ReportedMemory, estimate_memory, parse_llama_log

MIB = 2**20
LOW_PCT, HIGH_PCT = -1.0, 5.0  # the goal: never more than 1% short, at most 5% over
OLLAMA_RESERVE = 512 * MIB  # `memory_min` that the Ollama port adds to every GPU's total
LOAD_SNIPPET = r"""
import json, os, sys
import xllamacpp as x
cfg = json.loads(sys.argv[1])
p = x.CommonParams()
p.model.path = cfg["path"]
p.n_ctx = cfg["ctx"]
p.n_parallel = cfg["parallel"]
p.n_ubatch = cfg["ubatch"]
p.n_batch = cfg["ubatch"] if cfg["embeddings"] else 2048
p.cache_type_k = p.cache_type_v = getattr(x.ggml_type, "GGML_TYPE_" + cfg["kv"].upper())
p.flash_attn_type = getattr(
    x.llama_flash_attn_type, "LLAMA_FLASH_ATTN_TYPE_" + ("ENABLED" if cfg["fa"] else "DISABLED"))
if cfg["embeddings"]:
    p.embedding = True
    p.pooling_type = x.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
p.verbosity = 4
p.warmup = False
p.fit_params = False
p.hostnames = ["127.0.0.1"]
p.port = 0
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 2
try:
    x.Server(p)
    print("LOADED", flush=True)
except Exception as exc:
    print("FAILED", exc, flush=True)
os._exit(0)
"""


@dataclass(frozen=True)
class Case:
    slot_ctx: int  # tokens per slot; n_ctx = slot_ctx × parallel
    parallel: int = 1
    kv: str = "f16"
    fa: bool = True
    embeddings: bool = False
    ubatch: int = 512

    @property
    def ctx(self) -> int:
        return self.slot_ctx * self.parallel

    @property
    def label(self) -> str:
        flags = [self.kv, "fa" if self.fa else "no-fa"]
        if self.embeddings:
            flags.append("emb")
        if self.ubatch != 512:
            flags.append(f"ub{self.ubatch}")
        return f"{self.slot_ctx:>5}x{self.parallel} " + " ".join(flags)


# A sample of the grid (context per slot 256..32k × slots 1..8 × KV type × flash attention ×
# embeddings) that covers each value of each axis and the pairs that matter: contexts per slot
# below n_ubatch with several slots, quantized caches with and without flash attention (llama.cpp
# refuses a quantized V cache without it: those rows show the refusal), long single contexts.
# n_ctx stays at or under 32k so that a run takes a few minutes on 2 cores.
CASES = (
    Case(256),
    Case(256, parallel=4, embeddings=True),  # 4 slots below n_ubatch
    Case(512, parallel=8, kv="q8_0"),
    Case(1024, parallel=2, fa=False),
    Case(2048, kv="q4_0"),
    Case(2048, parallel=4, kv="q8_0", embeddings=True),
    Case(4096, parallel=8, embeddings=True),  # the gateway's defaults: 8 slots of 4096, embeddings
    Case(8192, fa=False),
    Case(8192, parallel=2, kv="q8_0", fa=False),  # quantized V without flash attention: refused
    Case(4096, kv="q8_0", ubatch=128),
    Case(32768),
)
QUICK = (Case(256, parallel=4, embeddings=True), Case(2048, kv="q4_0"), Case(4096, parallel=8))
CORE = (CASES[1], CASES[6])  # every model: slots below n_ubatch, the gateway's defaults
ROTATING = 3  # and this many of the other cases, a different few for each generated shape


def cases_for(index: int, *, everything: bool) -> tuple[Case, ...]:
    """All of CASES for the first model (SmolLM2) or with --all; else CORE and a rotation of
    the rest, so that the shapes together cover every case in a few minutes on 2 cores."""
    if everything or index == 0:
        return CASES
    rest = [c for c in CASES if c not in CORE]
    start = (index - 1) * ROTATING
    return (*CORE, *(rest[(start + j) % len(rest)] for j in range(ROTATING)))


def load_reported(path: Path, case: Case) -> ReportedMemory | str:
    """Load in a subprocess; the summed buffer sizes, or why the engine refused."""
    cfg = {
        "path": str(path),
        "ctx": case.ctx,
        "parallel": case.parallel,
        "ubatch": case.ubatch,
        "kv": case.kv,
        "fa": case.fa,
        "embeddings": case.embeddings,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", LOAD_SNIPPET, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if "threadpool init" in line or line.startswith(("LOADED", "FAILED")):
            break  # every buffer is allocated by now; skip the server's slot set-up
    proc.kill()
    proc.wait()
    errors = [ln.strip() for ln in lines if " E " in ln or ln.startswith("FAILED")]
    reported = parse_llama_log("".join(lines))
    if reported is None or any(ln.startswith("FAILED") for ln in lines):
        return (errors[0] if errors else "no buffer sizes in the log")[-110:]
    return reported


def ollama_port(path: Path, case: Case) -> int | None:
    """xllamacpp's port of Ollama's estimate: its total for one huge GPU, or None if it fails."""
    try:
        from xllamacpp import estimate_gpu_layers

        gpu = {"name": "CUDA", "memory_free": 1 << 44, "memory_total": 1 << 44}
        result = estimate_gpu_layers(
            [gpu], str(path), [], case.slot_ctx, case.ubatch, case.parallel, case.kv
        )
        return int(result.total_size) - OLLAMA_RESERVE  # less its fixed per-GPU minimum
    except Exception:
        return None


def row(name: str, path: Path, case: Case) -> dict[str, object]:
    info = read_gguf_info(path)
    est = estimate_memory(
        info,
        ctx_tokens=case.ctx,
        parallel=case.parallel,
        kv_type=case.kv,
        flash_attn=case.fa,
        ubatch=case.ubatch,
        embeddings=case.embeddings,
        repack=repack_bytes(info, host_repack_family()),
    )
    weights = info.input_weight_bytes + info.output_weight_bytes + sum(info.layer_weight_bytes)
    weights += sum(est.host_repack_bytes) - est.unmapped_bytes
    kv = sum(est.layer_bytes) - sum(info.layer_weight_bytes)
    estimated = {
        "model": weights,
        "kv": kv,
        "compute": est.gpu_compute_bytes,
        "total": est.cpu_total_bytes(),
    }
    out: dict[str, object] = {"model": name, "case": case.label, "estimate": estimated}
    reported = load_reported(path, case)
    if isinstance(reported, str):
        out["refused"] = reported
        return out
    actual = {
        "model": reported.model_bytes,
        "kv": reported.kv_bytes,
        "compute": reported.compute_bytes,
        "total": reported.total_bytes,
    }
    out["reported"] = actual
    out["error_pct"] = 100 * (estimated["total"] - actual["total"]) / actual["total"]
    out["compute_error_pct"] = 100 * (est.gpu_compute_bytes - actual["compute"]) / actual["total"]
    ollama = ollama_port(path, case)
    if ollama is not None:
        out["ollama_port_pct"] = 100 * (ollama - actual["total"]) / actual["total"]
    return out


def models(folder: Path, only: list[str] | None = None) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    demo = demo_model_path()
    if demo is not None and (not only or "smollm2-135m" in only):
        found.append(("smollm2-135m", demo))
    for shape in gguf_shapes.SHAPES:
        if not only or shape.name in only:
            path = gguf_shapes.write_shape(shape, folder / f"{shape.name}.gguf")
            found.append((shape.name, path))
    return found


def mib(n: object) -> str:
    return f"{int(n) / MIB:8.1f}" if isinstance(n, int) else f"{'-':>8}"


def print_row(r: dict[str, object]) -> None:
    est = r["estimate"]
    assert isinstance(est, dict)
    head = f"{r['model']:<20} {r['case']:<24}"
    if "refused" in r:
        print(
            f"{head} estimate {mib(est['total'])} MiB; engine refused: {r['refused']}", flush=True
        )
        return
    rep = r["reported"]
    assert isinstance(rep, dict)
    parts = " ".join(f"{mib(est[k])}/{mib(rep[k]).strip():>6}" for k in ("model", "kv", "compute"))
    ollama = r.get("ollama_port_pct")
    ollama_txt = f"{ollama:+7.1f}%" if isinstance(ollama, float) else "      -"
    print(
        f"{head} {parts} {mib(est['total'])}/{mib(rep['total']).strip():>6}"
        f" {r['error_pct']:+6.2f}% (compute {r['compute_error_pct']:+5.2f}%) {ollama_txt}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    parser.add_argument("--quick", action="store_true", help="3 cases per model")
    parser.add_argument("--all", action="store_true", help="every case for every model")
    parser.add_argument("--model", action="append", help="only these models (repeatable)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="mlo-estimate-") as tmp:
        if not args.json:
            print(
                "MiB, estimate/reported: model  kv  compute  total  error-of-total "
                "(compute's share)  ollama-port (less its 512 MiB reserve)"
            )
        for index, (name, path) in enumerate(models(Path(tmp), args.model)):
            everything = args.all or bool(args.model)
            for case in QUICK if args.quick else cases_for(index, everything=everything):
                r = row(name, path, case)
                rows.append(r)
                if args.json:
                    print(json.dumps(r), flush=True)
                else:
                    print_row(r)
    measured = [r for r in rows if "error_pct" in r]
    errors = [float(r["error_pct"]) for r in measured]  # type: ignore[arg-type]
    within = sum(LOW_PCT <= e <= HIGH_PCT for e in errors)
    under = min(measured, key=lambda r: float(r["error_pct"]))  # type: ignore[arg-type]
    over = max(measured, key=lambda r: float(r["error_pct"]))  # type: ignore[arg-type]
    print(
        f"\n{len(measured)} rows measured, {within} within {LOW_PCT:+.0f}%..{HIGH_PCT:+.0f}% "
        f"of the total, {len(rows) - len(measured)} refused by the engine "
        f"({time.perf_counter() - started:.0f} s; CPU repack family: {host_repack_family()})"
    )
    print(f"worst under-estimate: {under['model']} {under['case']} {under['error_pct']:+.2f}%")
    print(f"worst over-estimate:  {over['model']} {over['case']} {over['error_pct']:+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
