"""Choose the GPU monitor from settings, and say which one is in use."""

from __future__ import annotations

import logging

from ml_offload.config import GpuSettings
from ml_offload.errors import ConfigError
from ml_offload.gpu.base import GpuMonitor
from ml_offload.gpu.nvml import open_nvml
from ml_offload.gpu.simulated import SimulatedMonitor, no_gpu

log = logging.getLogger(__name__)


def open_monitor(settings: GpuSettings) -> GpuMonitor:
    simulated = [(d.name, d.total_bytes) for d in settings.simulated_devices]
    if settings.monitor == "simulated" or (settings.monitor == "auto" and simulated):
        if not simulated:
            raise ConfigError(
                "gpu.simulated_devices: set at least one device for monitor 'simulated'"
            )
        log.info("GPU monitor: simulated, %d device(s)", len(simulated))
        return SimulatedMonitor(simulated)
    if settings.monitor == "none":
        log.info("GPU monitor: none (CPU only)")
        return no_gpu()
    nvml = open_nvml()
    if isinstance(nvml, str):
        if settings.monitor == "nvml":
            raise ConfigError(f"gpu.monitor: nvml was asked for but {nvml}")
        log.info("GPU monitor: none (CPU only): %s", nvml)
        return no_gpu()
    log.info("GPU monitor: nvml, %d device(s)", len(nvml.devices()))
    return nvml
