"""The unit files in deploy/systemd, checked by systemd itself (no PID 1 needed for these)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY

UNITS = DEPLOY / "systemd"
SERVICES = ("ml-offload.service", "ml-offload@.service")
HARDENING = {
    "ProtectSystem": "strict",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "ProtectHome": "yes",
    "DevicePolicy": "closed",
    "CapabilityBoundingSet": "",
    "User": "ml-offload",
    "SystemCallArchitectures": "native",
}

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (apt install systemd)"
)


def directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            found.setdefault(m.group(1), []).append(m.group(2))
    return found


def installed(tmp_path: Path, mlo: Path, name: str, as_name: str | None = None) -> Path:
    """A copy of the unit whose ExecStart points at this environment's `mlo`."""
    text = (UNITS / name).read_text().replace("/usr/local/bin/mlo", str(mlo))
    target = tmp_path / (as_name or name)
    target.write_text(text)
    return target


@pytest.mark.parametrize("name", SERVICES)
def test_gateway_units_are_hardened(name: str) -> None:
    d = directives(UNITS / name)
    for key, value in HARDENING.items():
        assert value in d.get(key, []), f"{name}: {key}={value} missing"
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert "@system-service" in d["SystemCallFilter"]
    assert {a.split()[0] for a in d["DeviceAllow"]} >= {"char-nvidiactl", "char-nvidia-uvm"}
    assert d["StateDirectory"][0].startswith("ml-offload")
    assert " serve --config /etc/ml-offload/" in d["ExecStart"][0]


def test_template_keeps_each_instance_apart() -> None:
    d = directives(UNITS / "ml-offload@.service")
    assert d["ExecStart"] == ["/usr/local/bin/mlo serve --config /etc/ml-offload/%i.toml"]
    assert d["StateDirectory"] == ["ml-offload/%i"]
    assert "MLO_STORAGE__DATA_DIR=/var/lib/ml-offload/%i" in d["Environment"]
    assert d["ReadWritePaths"] == ["/var/lib/ml-offload/%i"]


def test_storage_monitor_timer_runs_the_check() -> None:
    assert directives(UNITS / "ml-storage-monitor.timer")["OnUnitActiveSec"] == ["15min"]
    service = directives(UNITS / "ml-storage-monitor.service")
    assert service["ExecStart"][0].startswith("/usr/local/bin/mlo du --check ")


@needs_systemd
@pytest.mark.parametrize(
    ("name", "as_name"),
    [
        ("ml-offload.service", None),
        ("ml-offload@.service", "ml-offload@gpu0.service"),
        ("ml-storage-monitor.service", None),
        ("ml-storage-monitor.timer", None),
    ],
)
def test_systemd_analyze_verify(tmp_path: Path, mlo_bin: Path, name: str, as_name: str) -> None:
    if name.endswith(".timer"):
        installed(tmp_path, mlo_bin, "ml-storage-monitor.service")
    unit = installed(tmp_path, mlo_bin, name, as_name)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@needs_systemd
@pytest.mark.parametrize("name", ["ml-offload.service", "ml-storage-monitor.service"])
def test_security_exposure_is_printed(tmp_path: Path, mlo_bin: Path, name: str) -> None:
    """The figure is printed (`pytest -s`), not asserted: systemd versions weigh checks
    differently. The level is, at most "OK"."""
    unit = installed(tmp_path, mlo_bin, name)
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout)
    assert m, done.stdout[-2000:] + done.stderr
    print(f"\n{name}: exposure {m.group(1)} {m.group(2)}")
    assert m.group(2) in ("SAFE", "OK")
