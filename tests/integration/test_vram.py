"""GPU placement on a simulated two-device machine, end to end: real gateway, real engines.

The engine runs on the CPU here; the simulated devices account for what the scheduler places
on them. Device sizes are derived from the gateway's own estimates so that the scenario holds
whatever the estimator's calibration: two small models fit one per device, the big one fits on
no single device but does across both once the idle small model is evicted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import GatewayFactory

pytestmark = pytest.mark.integration
MIB = 2**20
RESERVE = 16 * MIB


def models(path: Path) -> list[dict[str, object]]:
    return [
        {"name": "small-a", "path": path, "ctx_size": 256, "parallel": 1, "pinned": True},
        {"name": "small-b", "path": path, "ctx_size": 256, "parallel": 1},
        {"name": "big", "path": path, "ctx_size": 4096, "parallel": 4},
    ]


def test_simulated_two_devices_evict_split_and_report(
    gateway_factory: GatewayFactory, smollm_path: Path
) -> None:
    probe = gateway_factory(demo_model=False, gpu={"monitor": "none"}, models=models(smollm_path))
    est = {n: probe.model(n)["estimate"] for n in ("small-a", "big")}
    small, big = est["small-a"]["gpu_full_bytes"], est["big"]["gpu_full_bytes"]
    compute = est["big"]["gpu_compute_bytes"]
    assert big > small + compute, "the scenario needs a big model well above the small ones"
    # usable room per device U: `big` fits on neither device alone (U < big), not across both
    # while both small models stay (2(U - small) < big + compute), and across both once one is
    # evicted (2U - small >= big + compute). Take a point inside that window, a margin of
    # several layers from either edge.
    low, high = (big + compute + small) // 2, min(big, (big + compute) // 2 + small)
    assert high - low > 4 * (big // est["big"]["layers"]), "window too narrow for the estimate"
    usable = low + (high - low) // 2
    devices = [{"name": f"sim{i}", "total_bytes": usable + RESERVE} for i in range(2)]
    gw = gateway_factory(
        demo_model=False,
        gpu={
            "monitor": "simulated",
            "reserve_bytes": RESERVE,
            "context_overhead_bytes": 0,  # the windows above count model buffers only
            "simulated_devices": devices,
        },
        models=models(smollm_path),
    )
    for name in ("small-a", "small-b", "big"):
        chat = gw.client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content is not None

    status = gw.http.get("/vram/status").json()
    assert status["monitor"] == "simulated" and len(status["devices"]) == 2
    placed = {m["name"]: m for m in status["models"]}
    assert set(placed) == {"small-a", "big"}, "the idle, unpinned small model was evicted"
    assert gw.model("small-b")["state"] == "stopped"
    assert len(placed["big"]["device_bytes"]) == 2, "big is split over both devices"
    assert placed["big"]["gpu_layers"] == placed["big"]["layers"]
    for d in status["devices"]:
        assert d["used_bytes"] == sum(d["models"].values())
        assert d["used_bytes"] <= d["total_bytes"] - RESERVE
        assert "big" in d["models"]
    metrics = gw.http.get("/metrics").text
    assert 'mlo_gpu_memory_used_bytes{device="0",name="sim0"}' in metrics

    table = subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", "vram", "--url", gw.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": ""},
    )
    assert table.returncode == 0, table.stderr
    assert "monitor: simulated" in table.stdout and "sim1" in table.stdout and "big" in table.stdout


def test_model_too_big_for_the_gpu_is_partially_offloaded(
    gateway_factory: GatewayFactory, smollm_path: Path
) -> None:
    probe = gateway_factory(
        demo_model=False, gpu={"monitor": "none"}, models=models(smollm_path)[2:]
    )
    big = probe.model("big")["estimate"]
    usable = big["gpu_full_bytes"] // 2
    gw = gateway_factory(
        demo_model=False,
        gpu={
            "monitor": "simulated",
            "reserve_bytes": RESERVE,
            "context_overhead_bytes": 0,
            "simulated_devices": [{"name": "sim0", "total_bytes": usable + RESERVE}],
        },
        models=models(smollm_path)[2:],
    )
    gw.client.chat.completions.create(
        model="big", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    placed = gw.http.get("/vram/status").json()["models"][0]
    assert 0 < placed["gpu_layers"] < placed["layers"]
    assert placed["device_bytes"]["0"] <= usable
