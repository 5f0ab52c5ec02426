"""What the engine is given, on both launch paths, with a placement the simulated GPUs force.

Two simulated devices with room for about two fifths of the model's layers each: the scheduler
places a partial offload split over both (0 < layers < all, a two-way tensor split). The engine
must get those placed values, not the configured cap (`-1`, all layers): issue 11, where the
`llama-server` path passed the cap.

- xllamacpp: the engine child's launch config is on its command line (/proc/<pid>/cmdline).
- llama-server: a small executable written here records its argv, then serves through llama.cpp
  (xllamacpp) with those very arguments, so a real engine answers behind the gateway.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Gateway, GatewayFactory

pytestmark = pytest.mark.integration
MIB = 2**20
RESERVE = 16 * MIB

# argv recorded, then llama-server's flags mapped onto xllamacpp's CommonParams
FAKE_LLAMA_SERVER = """#!{python}
import json, os, signal, sys

args = sys.argv[1:]
with open({record!r}, "a") as fh:
    fh.write(json.dumps(args) + "\\n")


def value(flag):
    return args[args.index(flag) + 1] if flag in args else None


import xllamacpp as xlc

p = xlc.CommonParams()
p.model.path = value("--model")
p.hostnames = [value("--host")]
p.port = int(value("--port"))
p.n_ctx = int(value("--ctx-size"))
p.n_parallel = int(value("--parallel"))
p.n_gpu_layers = int(value("--n-gpu-layers"))
if value("--ubatch-size"):
    p.n_ubatch = int(value("--ubatch-size"))
p.model_alias = {{value("--alias")}}
p.endpoint_metrics = "--metrics" in args
if os.environ.get("LLAMA_API_KEY"):  # llama-server reads --api-key from this variable
    p.api_keys = [os.environ["LLAMA_API_KEY"]]
if value("--threads"):
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = int(value("--threads"))
if value("--tensor-split"):
    split = [float(x) for x in value("--tensor-split").split(",")]
    p.tensor_split = split + [0.0] * (len(p.tensor_split) - len(split))
if "--embeddings" in args:
    p.embedding = True
    p.pooling_type = xlc.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
server = xlc.Server(p)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
sys.stdin.read()
os._exit(0)
"""


def model(path: Path) -> dict[str, Any]:
    return {"name": "big", "path": path, "ctx_size": 1024, "parallel": 2}


def placed_gateway(
    gateway_factory: GatewayFactory, smollm_path: Path, engine: dict[str, Any]
) -> tuple[Gateway, dict[str, Any]]:
    """A gateway whose two simulated devices force a partial offload split over both; the
    model loaded through it, and its placement from /vram/status."""
    probe = gateway_factory(demo_model=False, gpu={"monitor": "none"}, models=[model(smollm_path)])
    est = probe.model("big")["estimate"]
    compute = est["gpu_compute_bytes"]  # paid on each device used
    room = compute + (est["gpu_full_bytes"] - compute) * 2 // 5  # 2/5 of the layers each
    devices = [{"name": f"sim{i}", "total_bytes": room + RESERVE} for i in range(2)]
    gw = gateway_factory(
        demo_model=False,
        engine=engine,
        gpu={
            "monitor": "simulated",
            "reserve_bytes": RESERVE,
            "simulated_devices": devices,
            "context_overhead_bytes": 0,  # the room above counts the model's buffers only
        },
        models=[model(smollm_path)],
    )
    chat = gw.client.chat.completions.create(
        model="big", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert chat.choices[0].message.content is not None  # a real engine answered
    placed = gw.http.get("/vram/status").json()["models"][0]
    assert 0 < placed["gpu_layers"] < placed["layers"], "the scenario needs a partial offload"
    assert len(placed["device_bytes"]) == 2, "the scenario needs a split over both devices"
    return gw, placed


def assert_split_of_two(split: list[float]) -> None:
    assert len(split) == 2 and all(share > 0 for share in split)
    assert sum(split) == pytest.approx(1.0, abs=0.01)


def test_xllamacpp_engine_gets_the_placed_layers_and_split(
    gateway_factory: GatewayFactory, smollm_path: Path
) -> None:
    gw, placed = placed_gateway(gateway_factory, smollm_path, {"kind": "xllamacpp"})
    pid = gw.model("big")["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    cfg = json.loads(argv[argv.index(b"ml_offload.backends.engine_child") + 1])
    assert cfg["gpu_layers"] == placed["gpu_layers"]
    assert_split_of_two(cfg["tensor_split"])


def test_llama_server_binary_gets_the_placed_layers_and_split(
    gateway_factory: GatewayFactory, smollm_path: Path, tmp_path: Path
) -> None:
    record = tmp_path / "argv.jsonl"
    binary = tmp_path / "llama-server"
    binary.write_text(FAKE_LLAMA_SERVER.format(python=sys.executable, record=str(record)))
    binary.chmod(0o755)
    engine = {"kind": "llama-server", "llama_server_bin": str(binary)}
    gw, placed = placed_gateway(gateway_factory, smollm_path, engine)
    [args] = [json.loads(line) for line in record.read_text().splitlines()]
    assert "--api-key" not in args  # the key is in its environment, not on `ps`
    assert httpx.get(f"{gw.model('big')['base_url']}/slots").status_code == 401
    given = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("--")}
    assert given["--model"] == str(smollm_path)
    assert int(given["--n-gpu-layers"]) == placed["gpu_layers"]  # not the cap (-1)
    assert_split_of_two([float(x) for x in given["--tensor-split"].split(",")])
