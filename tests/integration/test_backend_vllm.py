"""vLLM behind the gateway: load-aware routing from its /metrics, and a `vllm serve` started,
probed and stopped by ml-offload. The servers are `fake_vllm.FakeVllm` (see its docstring for
the documents followed); the managed one is the same fake run as a program."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Gateway, GatewayFactory, pid_alive
from tests.integration.fake_vllm import FakeVllm

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_vllms() -> Iterator[tuple[FakeVllm, FakeVllm]]:
    with (
        FakeVllm("from busy", running=6, waiting=4, kv_usage=0.9) as busy,
        FakeVllm("from idle", running=1, legacy_metrics=True) as idle,
    ):
        yield busy, idle


def backends(gw: Gateway) -> dict[str, dict[str, Any]]:
    return {d["model"]: d for d in gw.http.get("/backends").json()["data"]}


def wait_for_load(gw: Gateway, expect: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Until /backends shows each model's scraped running+waiting as expected."""
    deadline = time.monotonic() + 15
    while True:
        seen = backends(gw)
        loads = {name: (b.get("probe") or {}).get("load") or {} for name, b in seen.items()}
        if all(
            loads[n] and loads[n]["running"] + loads[n]["waiting"] == w for n, w in expect.items()
        ):
            return seen
        assert time.monotonic() < deadline, f"probes never showed {expect}: {seen}"
        time.sleep(0.2)


def ask(gw: Gateway, model: str = "m") -> str:
    chat = gw.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.model == model
    return str(chat.choices[0].message.content)


def test_the_less_loaded_vllm_answers(
    gateway_factory: GatewayFactory, two_vllms: tuple[FakeVllm, FakeVllm]
) -> None:
    busy, idle = two_vllms
    gw = gateway_factory(
        demo_model=False,
        models=[
            {
                "name": "m",
                "url": busy.url,
                "backend": "vllm",
                "remote_model": "served",
                "fallbacks": ["m-idle"],
            },
            {"name": "m-idle", "url": idle.url, "backend": "vllm", "remote_model": "served"},
        ],
    )
    seen = wait_for_load(gw, {"m": 10, "m-idle": 1})
    assert seen["m"]["kind"] == "vllm" and seen["m"]["probe"]["load"]["kv_cache_usage"] == 0.9
    assert seen["m-idle"]["probe"]["load"]["kv_cache_usage"] == 0.1  # the older gauge's name
    assert ask(gw) == "from idle"  # the configured primary is busier
    stream = gw.client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "from idle"
    assert busy.bodies("/v1/chat/completions") == []

    busy.running, busy.waiting, idle.waiting = 0, 0, 5  # the load turns around
    wait_for_load(gw, {"m": 0, "m-idle": 6})
    assert ask(gw) == "from busy"


def test_unreachable_metrics_are_unknown_load(
    gateway_factory: GatewayFactory, two_vllms: tuple[FakeVllm, FakeVllm]
) -> None:
    busy, idle = two_vllms
    gw = gateway_factory(
        demo_model=False,
        models=[
            {
                "name": "m",
                "url": idle.url,
                "backend": "vllm",
                "remote_model": "served",
                "fallbacks": ["m-busy"],
            },
            {"name": "m-busy", "url": busy.url, "backend": "vllm", "remote_model": "served"},
        ],
    )
    wait_for_load(gw, {"m": 1, "m-busy": 10})
    idle.stop()  # its /metrics goes away: no load figure, not healthy, cooled down on failure
    deadline = time.monotonic() + 15
    while backends(gw)["m"]["probe"]["ok"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    entry = backends(gw)["m"]
    assert entry["healthy"] is False and entry["probe"]["load"] is None
    assert "cannot reach" in entry["probe"]["error"]
    assert ask(gw) == "from busy"  # the primary is unreachable: the fallback answers


def test_vllm_serve_is_started_and_stopped(
    gateway_factory: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_VLLM_ARGV", str(argv_file))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    serve = {
        "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "command": [sys.executable, "-m", "tests.integration.fake_vllm"],
        "tensor_parallel_size": 2,
        "quantization": "fp8",
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.85,
    }
    gw = gateway_factory(
        demo_model=False, models=[{"name": "qwen", "backend": "vllm", "serve": serve}]
    )
    assert backends(gw)["qwen"]["state"] == "stopped"
    assert ask(gw, "qwen") == "Hello from vLLM"  # started on demand, then asked

    argv = json.loads(argv_file.read_text())
    assert argv[:2] == ["serve", "Qwen/Qwen2.5-0.5B-Instruct"]
    flags = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert flags["--served-model-name"] == "qwen" and flags["--tensor-parallel-size"] == "2"
    assert flags["--quantization"] == "fp8" and flags["--max-model-len"] == "4096"
    assert flags["--gpu-memory-utilization"] == "0.85" and flags["--host"] == "127.0.0.1"

    entry = backends(gw)["qwen"]
    assert entry["kind"] == "vllm" and entry["state"] == "ready"
    assert entry["target"] == f"http://127.0.0.1:{flags['--port']}"
    pid = gw.model("qwen")["pid"]
    assert pid and pid_alive(pid)
    assert gw.http.post("/models/qwen/unload").json()["state"] == "stopped"
    deadline = time.monotonic() + 10
    while pid_alive(pid):
        assert time.monotonic() < deadline, "vllm serve outlived its unload"
        time.sleep(0.05)


def test_a_model_larger_than_a_node_spans_a_ray_cluster(
    gateway_factory: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's multi-node serving as one deployment: GPUs per node as tensor parallel, nodes as
    pipeline stages, on the Ray cluster the nodes joined (RAY_ADDRESS in vLLM's environment)."""
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_VLLM_ARGV", str(argv_file))
    paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    serve = {
        "model": "meta-llama/Llama-3.1-405B-Instruct",
        "command": [sys.executable, "-m", "tests.integration.fake_vllm"],
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "ray_address": "10.0.0.1:6379",
    }
    gw = gateway_factory(
        demo_model=False, models=[{"name": "big", "backend": "vllm", "serve": serve}]
    )
    assert ask(gw, "big") == "Hello from vLLM"
    argv = json.loads(argv_file.read_text())
    flags = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert flags["--tensor-parallel-size"] == "8" and flags["--pipeline-parallel-size"] == "2"
    assert flags["--distributed-executor-backend"] == "ray"
    assert Path(f"{argv_file}.ray").read_text() == "10.0.0.1:6379"
    assert [m["id"] for m in gw.http.get("/models").json()["data"]] == ["big"]  # one deployment
