"""Simulated devices for machines without an NVIDIA GPU: memory is what the scheduler placed."""

from __future__ import annotations

from ml_offload.gpu.base import GpuDevice


class SimulatedMonitor:
    def __init__(self, devices: list[tuple[str, int]], name: str = "simulated") -> None:
        self.name = name
        self._devices = devices
        self._placed: dict[str, dict[int, int]] = {}

    def devices(self) -> list[GpuDevice]:
        out = []
        for i, (label, total) in enumerate(self._devices):
            used = sum(p.get(i, 0) for p in self._placed.values())
            out.append(GpuDevice(i, label, f"SIM-{i}", total, used, max(0, total - used)))
        return out

    def process_bytes(self) -> dict[int, int]:
        return {}

    def track(self, model: str, per_device: dict[int, int]) -> None:
        self._placed[model] = dict(per_device)

    def untrack(self, model: str) -> None:
        self._placed.pop(model, None)

    def close(self) -> None:
        self._placed.clear()


def no_gpu() -> SimulatedMonitor:
    """The monitor of a machine with no GPU: no devices, models run on the CPU."""
    return SimulatedMonitor([], name="none")
