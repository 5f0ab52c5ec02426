"""GPU monitors: NVML (against a fake of the NVML library's calls, since this machine has no
NVIDIA GPU), the simulated devices, and how `auto` chooses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ml_offload.config import GpuSettings, SimulatedDevice
from ml_offload.errors import ConfigError
from ml_offload.gpu.nvml import NvmlMonitor, open_nvml
from ml_offload.gpu.select import open_monitor
from ml_offload.gpu.simulated import SimulatedMonitor

GIB = 2**30


class FakeNvml:
    """The subset of pynvml's API the monitor calls, with NVML's units (bytes, mW, %)."""

    def __init__(self) -> None:
        self.shut = False

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=24 * GIB, used=(h + 1) * GIB, free=24 * GIB - (h + 1) * GIB)

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA RTX 4090"

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=37)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        if h == 1:
            raise RuntimeError("NVMLError_NotSupported")
        return 61

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 215_500

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [
            SimpleNamespace(pid=100, usedGpuMemory=GIB),
            SimpleNamespace(pid=200, usedGpuMemory=None),
        ]

    def nvmlShutdown(self) -> None:
        self.shut = True


def test_nvml_devices_and_per_process_memory() -> None:
    nvml = FakeNvml()
    mon = NvmlMonitor(nvml)
    d0, d1 = mon.devices()
    assert (d0.name, d0.uuid, d0.total_bytes, d0.used_bytes, d0.free_bytes) == (
        "NVIDIA RTX 4090", "GPU-0", 24 * GIB, GIB, 23 * GIB,
    )  # fmt: skip
    assert d0.utilization_pct == 37 and d0.temperature_c == 61 and d0.power_w == 215.5
    assert d1.temperature_c is None  # an unsupported query is unknown, not a crash
    assert mon.process_bytes() == {100: 2 * GIB}  # summed over both devices; unknown skipped
    mon.close()
    assert nvml.shut


def test_missing_nvml_is_a_reason_not_a_crash() -> None:
    reason = open_nvml()
    if not isinstance(reason, str):
        pytest.skip("this machine has a working NVML")
    assert "nvidia-ml-py" in reason or "NVML" in reason


def test_simulated_devices_track_placements() -> None:
    mon = SimulatedMonitor([("a", 8 * GIB), ("b", 4 * GIB)])
    mon.track("m", {0: 3 * GIB, 1: GIB})
    a, b = mon.devices()
    assert (a.used_bytes, a.free_bytes, b.free_bytes) == (3 * GIB, 5 * GIB, 3 * GIB)
    mon.untrack("m")
    assert mon.devices()[0].free_bytes == 8 * GIB


def test_monitor_selection() -> None:
    sim = [SimulatedDevice(name="s", total_bytes=GIB)]
    assert open_monitor(GpuSettings(monitor="none")).name == "none"
    assert open_monitor(GpuSettings(monitor="simulated", simulated_devices=sim)).name == "simulated"
    assert open_monitor(GpuSettings(simulated_devices=sim)).name == "simulated"
    with pytest.raises(ConfigError, match=r"gpu\.simulated_devices"):
        open_monitor(GpuSettings(monitor="simulated"))
    if isinstance(open_nvml(), str):
        assert open_monitor(GpuSettings()).name == "none"
        with pytest.raises(ConfigError, match=r"gpu\.monitor"):
            open_monitor(GpuSettings(monitor="nvml"))
