"""NVIDIA devices through NVML (`nvidia-ml-py`). A missing library or driver is reported by
`open_nvml` as a reason, never a crash."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from ml_offload.gpu.base import GpuDevice

log = logging.getLogger(__name__)


class NvmlMonitor:
    name = "nvml"

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        count = nvml.nvmlDeviceGetCount()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    def devices(self) -> list[GpuDevice]:
        return [self._device(i, h) for i, h in enumerate(self._handles)]

    def _device(self, index: int, handle: Any) -> GpuDevice:
        n = self._nvml
        mem = n.nvmlDeviceGetMemoryInfo(handle)
        return GpuDevice(
            index=index,
            name=_text(n.nvmlDeviceGetName(handle)),
            uuid=_text(n.nvmlDeviceGetUUID(handle)),
            total_bytes=int(mem.total),
            used_bytes=int(mem.used),
            free_bytes=int(mem.free),
            utilization_pct=_try(lambda: float(n.nvmlDeviceGetUtilizationRates(handle).gpu)),
            temperature_c=_try(lambda: float(n.nvmlDeviceGetTemperature(handle, 0))),
            power_w=_try(lambda: n.nvmlDeviceGetPowerUsage(handle) / 1000.0),
        )

    def process_bytes(self) -> dict[int, int]:
        held: dict[int, int] = {}
        for handle in self._handles:
            procs = _try(lambda h=handle: self._nvml.nvmlDeviceGetComputeRunningProcesses(h)) or []
            for p in procs:
                if p.usedGpuMemory is not None:
                    held[p.pid] = held.get(p.pid, 0) + int(p.usedGpuMemory)
        return held

    def track(self, model: str, per_device: dict[int, int]) -> None:
        return None  # NVML measures the real thing

    def untrack(self, model: str) -> None:
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


def open_nvml() -> NvmlMonitor | str:
    """An NVML monitor, or the reason there is none (library, driver, or no device)."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed (pip install 'ml-offload[gpu]')"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses for a missing driver/library
        return f"NVML is unavailable: {exc}"
    monitor = NvmlMonitor(pynvml)
    if not monitor.devices():
        monitor.close()
        return "NVML found no GPU"
    return monitor


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _try(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # an unsupported query on this device: reported as unknown
        return None
