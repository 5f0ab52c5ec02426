"""`mlo server start|restart` beside another gateway (issue 14): a demo gateway (`mlo serve`,
what `make demo` runs) on the same data folder holds the audit log, so a daemon started beside
it is refused with that first error, naming the file (not the shutdown noise after it); a
restart with no daemon says it started one; the daemon answering is the process started (its
pid in /health)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import _free_port
from tests.integration.test_audit_cli import wait_for
from tests.integration.test_cli_pipeline import config, env_for, mlo, one_error_line

pytestmark = pytest.mark.integration


def test_daemon_beside_a_demo_gateway(tmp_path: Path) -> None:
    demo_port, daemon_port = _free_port(), _free_port()
    cfg = config(tmp_path, demo_port)
    env = env_for(tmp_path)
    demo = subprocess.Popen(
        [sys.executable, "-m", "ml_offload.cli.main", "serve", "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{demo_port}"
        wait_for(lambda: _health(url) is not None, what="the demo gateway")
        assert _health(url) == demo.pid  # /health names the process answering

        refused = mlo(env, "server", "start", "--config", str(cfg), "--port", str(daemon_port))
        line = one_error_line(refused)
        audit = tmp_path / "data" / "audit" / "audit.jsonl"
        assert "being written by another process" in line and str(audit) in line, line
        assert "Unclosed" not in line
    finally:
        demo.terminate()
        demo.wait(30)

    restarted = mlo(env, "server", "restart", "--config", str(cfg), "--port", str(daemon_port))
    assert restarted.returncode == 0, restarted.stderr
    try:
        assert "started (no daemon was running)" in restarted.stdout
        pid_file = tmp_path / "state" / "ml-offload" / "gateway.pid"
        daemon_pid = json.loads(pid_file.read_text())["pid"]
        assert _health(f"http://127.0.0.1:{daemon_port}") == daemon_pid
    finally:
        assert mlo(env, "server", "stop").returncode == 0


def _health(url: str) -> int | None:
    try:
        pid: int = httpx.get(f"{url}/health", timeout=1).json()["pid"]
    except httpx.HTTPError:
        return None
    return pid
