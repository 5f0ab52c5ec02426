"""What `mlo bootstrap` tells to install, for machines described by hand."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ml_offload.bootstrap import WHEELS, Finding, Gpu, Machine, diagnose, probe

H100 = Gpu(0, "NVIDIA H100 80GB HBM3", "sm_90", 80 * 2**30)


def by_name(machine: Machine) -> dict[str, Finding]:
    return {f.name: f for f in diagnose(machine)}


def test_cpu_machine_with_xllamacpp_is_fine() -> None:
    found = by_name(Machine(xllamacpp_version="1.0", xllamacpp_devices=["CPU: Xeon"]))
    assert found["GPU"].status == "warn" and "CPU" in found["GPU"].detail
    assert "CUDA driver" not in found
    assert not [f for f in found.values() if f.status == "missing"]


def test_gpu_with_a_cpu_build_gets_the_cuda_wheel_command() -> None:
    machine = Machine(
        gpus=[H100],
        driver_version="570.86",
        cuda_version="12.8",
        xllamacpp_version="1.0",
        xllamacpp_devices=["CPU: Xeon"],
    )
    found = by_name(machine)
    assert "sm_90" in found["GPU"].detail
    assert found["CUDA driver"].status == "ok"
    xl = found["xllamacpp"]
    assert xl.status == "missing"
    assert xl.fix == (
        f"{sys.executable} -m pip install xllamacpp --force-reinstall --index-url {WHEELS}/cu128"
    )
    machine.cuda_version = "13.2"
    assert by_name(machine)["xllamacpp"].fix.endswith("/cu132")  # type: ignore[union-attr]


def test_old_driver_gets_a_source_build_with_the_architecture() -> None:
    machine = Machine(gpus=[H100], cuda_version="12.2", xllamacpp_version="1.0")
    found = by_name(machine)
    assert found["CUDA driver"].status == "warn"
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in (found["xllamacpp"].fix or "")


def test_gpu_build_is_ok() -> None:
    machine = Machine(
        gpus=[H100], cuda_version="12.8", xllamacpp_version="1.0", xllamacpp_devices=["CUDA0: H100"]
    )
    assert by_name(machine)["xllamacpp"].status == "ok"


def test_no_engine_is_missing() -> None:
    found = by_name(Machine())
    assert found["engine"].status == "missing"
    assert "pip install xllamacpp" in (found["engine"].fix or "")
    assert by_name(Machine(llama_server="/usr/bin/llama-server"))["engine"].status == "ok"


def test_probe_this_machine() -> None:
    machine = probe()
    assert machine.xllamacpp_version  # installed with the package
    assert machine.xllamacpp_devices


def test_probe_reads_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  --query-gpu=*) echo "0, NVIDIA H100 80GB HBM3, 9.0, 81559, 550.54.15";'
        ' echo "1, NVIDIA GeForce RTX 4090, 8.9, 24564, 550.54.15" ;;\n'
        '  *) echo "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |" ;;\n'
        "esac\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    machine = probe()
    assert machine.gpus == [
        Gpu(0, "NVIDIA H100 80GB HBM3", "sm_90", 81559 * 2**20),
        Gpu(1, "NVIDIA GeForce RTX 4090", "sm_89", 24564 * 2**20),
    ]
    assert (machine.driver_version, machine.cuda_version) == ("550.54.15", "12.4")
    found = by_name(machine)
    assert found["CUDA driver"].status == "warn"  # 12.4 < 12.8: no prebuilt CUDA wheel fits
    assert "-DCMAKE_CUDA_ARCHITECTURES=89;90" in (found["xllamacpp"].fix or "")
