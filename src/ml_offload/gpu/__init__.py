"""GPU devices: NVML on NVIDIA machines, a simulated set elsewhere (tests, CI, laptops)."""
