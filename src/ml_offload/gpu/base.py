"""What every GPU monitor reports, and the protocol the scheduler uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class GpuDevice:
    index: int
    name: str
    uuid: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class GpuMonitor(Protocol):
    """Live device memory, and the memory each process holds on the GPUs."""

    name: str

    def devices(self) -> list[GpuDevice]: ...

    def process_bytes(self) -> dict[int, int]:
        """GPU memory held per process id, summed over devices."""
        ...

    def track(self, model: str, per_device: dict[int, int]) -> None:
        """A model was placed (only a simulated monitor needs to account for it)."""
        ...

    def untrack(self, model: str) -> None: ...

    def close(self) -> None: ...
