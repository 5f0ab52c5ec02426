"""What this machine has for running models, and exactly what to install for GPU builds.

Probes (each a short subprocess, so a broken driver or engine cannot take the caller down):
`nvidia-smi` for the GPUs, their architecture (sm_XX) and the CUDA version the driver supports;
the `xllamacpp` package and the devices its build can use; a `llama-server` binary and its
`--list-devices`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Status = Literal["ok", "warn", "missing"]
WHEELS = "https://xorbitsai.github.io/xllamacpp/whl"
_GPU_DEVICE = re.compile(r"^(CUDA|ROCm|HIP|Vulkan|Metal|SYCL)", re.IGNORECASE)
_PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    name: str
    sm: str | None  # "sm_90"
    memory_bytes: int | None


@dataclass(slots=True)
class Machine:
    gpus: list[Gpu] = field(default_factory=list)
    driver_version: str | None = None
    cuda_version: str | None = None  # the newest CUDA the driver supports
    nvidia_devices: bool = False  # /dev/nvidia0 exists
    xllamacpp_version: str | None = None
    xllamacpp_devices: list[str] = field(default_factory=list)
    llama_server: str | None = None
    llama_server_version: str | None = None
    llama_server_devices: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Finding:
    name: str
    status: Status
    detail: str
    fix: str | None = None


def probe(llama_server_bin: str | None = None) -> Machine:
    machine = Machine(nvidia_devices=Path("/dev/nvidia0").exists())
    _probe_nvidia(machine)
    _probe_xllamacpp(machine)
    _probe_llama_server(machine, llama_server_bin)
    return machine


def diagnose(machine: Machine) -> list[Finding]:
    """One finding per part; `missing` ones are what `mlo bootstrap --check` fails on."""
    return [
        _gpu_finding(machine),
        *_driver_finding(machine),
        _xllamacpp_finding(machine),
        _llama_server_finding(machine),
        _engine_finding(machine),
        _profile_finding(machine),
    ]


# (what a GPU's name contains, the least memory it must have, the profile); first match wins
_PROFILE_RULES: tuple[tuple[str, int, str], ...] = (
    ("B200", 0, "b200"),
    ("H100", 0, "h100"),
    ("H200", 0, "h100"),
    ("A100", 70 * 2**30, "a100-80g"),
    ("4090", 0, "rtx4090"),
)


def suggest_profile(machine: Machine) -> str | None:
    """The hardware profile (`profiles.PROFILES`) that fits this machine's GPUs, if one does."""
    if not machine.gpus:
        return "cpu"
    gpu = machine.gpus[0]
    for needle, min_bytes, profile in _PROFILE_RULES:
        if needle in gpu.name.upper() and (gpu.memory_bytes or 0) >= min_bytes:
            return profile
    return None


def _profile_finding(machine: Machine) -> Finding:
    profile = suggest_profile(machine)
    if profile is None:
        return Finding("profile", "ok", "no named profile fits: the defaults apply")
    where = f"{len(machine.gpus)}× {machine.gpus[0].name}" if machine.gpus else "no GPU"
    return Finding(
        "profile", "ok", f"{profile} ({where})", f'set profile = "{profile}" in the config file'
    )


def _run(args: list[str]) -> str | None:
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout + done.stderr) if done.returncode == 0 else None


def _probe_nvidia(machine: Machine) -> None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return
    query = "index,name,compute_cap,memory.total,driver_version"
    out = _run([smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"])
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        index, name, cap, mem_mib, driver = parts
        sm = "sm_" + cap.replace(".", "") if re.fullmatch(r"\d+\.\d+", cap) else None
        mem = int(float(mem_mib)) * 1024 * 1024 if re.fullmatch(r"[\d.]+", mem_mib) else None
        machine.gpus.append(Gpu(int(index), name, sm, mem))
        machine.driver_version = driver
    m = re.search(r"CUDA Version:\s*([\d.]+)", _run([smi]) or "")
    machine.cuda_version = m.group(1) if m else None


def _probe_xllamacpp(machine: Machine) -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        return
    try:
        machine.xllamacpp_version = importlib.metadata.version("xllamacpp")
    except importlib.metadata.PackageNotFoundError:
        machine.xllamacpp_version = "unknown"
    code = (
        "import json, xllamacpp as x; "
        "print(json.dumps([d['name'] + ': ' + d['description'] for d in x.get_device_info()]))"
    )
    out = _run([sys.executable, "-c", code])
    try:
        machine.xllamacpp_devices = json.loads((out or "[]").strip().splitlines()[-1])
    except (ValueError, IndexError):
        machine.xllamacpp_devices = []


def _probe_llama_server(machine: Machine, explicit: str | None) -> None:
    path = explicit or shutil.which("llama-server")
    if path is None or not Path(path).exists():
        return
    machine.llama_server = path
    version = _run([path, "--version"]) or ""
    m = re.search(r"version:\s*(\S+(?: \([0-9a-f]+\))?)", version)
    machine.llama_server_version = m.group(1) if m else None
    devices = _run([path, "--list-devices"]) or ""
    machine.llama_server_devices = [
        ln.strip() for ln in devices.splitlines() if re.match(r"^\s+\S+:", ln)
    ]


def _gpu_finding(machine: Machine) -> Finding:
    if machine.gpus:
        detail = "; ".join(
            f"{g.index}: {g.name} ({g.sm or 'sm unknown'}, {_gib(g.memory_bytes)})"
            for g in machine.gpus
        )
        return Finding("GPU", "ok", detail)
    if machine.nvidia_devices:
        return Finding(
            "GPU",
            "missing",
            "an NVIDIA device exists (/dev/nvidia0) but nvidia-smi is missing or failing",
            "install the NVIDIA driver utilities (e.g. `apt install nvidia-utils-570`) "
            "matching the loaded kernel driver",
        )
    return Finding("GPU", "warn", "no NVIDIA GPU found: models run on the CPU")


def _driver_finding(machine: Machine) -> list[Finding]:
    if not machine.gpus:
        return []
    detail = f"driver {machine.driver_version or '?'}, CUDA {machine.cuda_version or '?'}"
    if _version(machine.cuda_version) < (12, 8):
        return [
            Finding(
                "CUDA driver",
                "warn",
                detail + " (the prebuilt CUDA wheels need a driver for CUDA 12.8 or newer)",
                "update the NVIDIA driver to 570 or newer, or build llama-server yourself: "
                + _build_hint(machine),
            )
        ]
    return [Finding("CUDA driver", "ok", detail)]


def _xllamacpp_finding(machine: Machine) -> Finding:
    if machine.xllamacpp_version is None:
        return Finding(
            "xllamacpp",
            "warn" if machine.llama_server else "missing",
            "not installed",
            _wheel_command(machine) or f"{sys.executable} -m pip install xllamacpp",
        )
    devices = ", ".join(machine.xllamacpp_devices) or "none reported"
    detail = f"{machine.xllamacpp_version}; devices: {devices}"
    gpu_build = any(_GPU_DEVICE.match(d) for d in machine.xllamacpp_devices)
    if machine.gpus and not gpu_build:
        return Finding(
            "xllamacpp",
            "missing",
            detail + " (a CPU-only build: the GPU is not used)",
            _wheel_command(machine) or _build_hint(machine),
        )
    return Finding("xllamacpp", "ok", detail)


def _llama_server_finding(machine: Machine) -> Finding:
    if machine.llama_server is None:
        return Finding("llama-server", "warn", "not found (optional: xllamacpp is enough)")
    devices = ", ".join(machine.llama_server_devices) or "CPU only"
    version = machine.llama_server_version or "version unknown"
    return Finding("llama-server", "ok", f"{machine.llama_server} ({version}); devices: {devices}")


def _engine_finding(machine: Machine) -> Finding:
    if machine.xllamacpp_version:
        return Finding("engine", "ok", "xllamacpp (engine.kind = auto picks it)")
    if machine.llama_server:
        return Finding("engine", "ok", f"llama-server at {machine.llama_server}")
    return Finding(
        "engine",
        "missing",
        "no llama.cpp engine: models cannot be served",
        f"{sys.executable} -m pip install xllamacpp",
    )


def _wheel_command(machine: Machine) -> str | None:
    """The pip command for the CUDA wheel this driver can run, or None if none fits."""
    if not machine.gpus:
        return None
    cuda = _version(machine.cuda_version)
    sms = [_sm_number(g.sm) for g in machine.gpus if g.sm]
    old_gpu = any(sm < 75 for sm in sms)  # CUDA 13 wheels dropped Maxwell/Pascal/Volta
    if cuda >= (13, 2) and not old_gpu:
        tag = "cu132"
    elif cuda >= (12, 8):
        tag = "cu128"
    else:
        return None
    return f"{sys.executable} -m pip install xllamacpp --force-reinstall --index-url {WHEELS}/{tag}"


def _build_hint(machine: Machine) -> str:
    archs = sorted({str(_sm_number(g.sm)) for g in machine.gpus if g.sm}) or ["native"]
    return (
        "git clone https://github.com/ggml-org/llama.cpp && cd llama.cpp && "
        f"cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)} && "
        "cmake --build build -j --target llama-server, then set engine.llama_server_bin "
        "(needs the CUDA toolkit: nvcc)"
    )


def _sm_number(sm: str | None) -> int:
    digits = re.sub(r"\D", "", sm or "")
    return int(digits) if digits else 0


def _version(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in (text or "").split("."))
    except ValueError:
        return ()


def _gib(n: int | None) -> str:
    return "memory ?" if n is None else f"{n / 2**30:.0f} GiB"
