"""Pid files: stale ones (dead process, reused pid, garbage) are noticed and removed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ml_offload.daemon import Daemon, DaemonError, alive, first_error, is_gateway


def write_pid(daemon: Daemon, pid: int) -> None:
    daemon.state_dir.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "url": "http://127.0.0.1:1", "started_at": 0.0, "log_path": "x"}
    daemon.pid_path.write_text(json.dumps(info))


def test_no_pid_file(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    assert daemon.running() is None
    with pytest.raises(DaemonError, match="not running"):
        daemon.stop()


def test_dead_pid_is_stale(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    daemon = Daemon(tmp_path)
    write_pid(daemon, proc.pid)
    assert not alive(proc.pid)
    assert daemon.running() is None
    assert not daemon.pid_path.exists()


def test_pid_of_another_program_is_stale(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    write_pid(daemon, os.getpid())  # alive, but pytest is not a gateway
    assert alive(os.getpid()) and not is_gateway(os.getpid())
    assert daemon.running() is None
    assert not daemon.pid_path.exists()


def test_unreadable_pid_file_is_stale(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    daemon.pid_path.write_text("not json")
    assert daemon.running() is None
    assert not daemon.pid_path.exists()


def test_start_failure_reason_is_the_first_error_of_the_latest_start(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text(
        "--- ml-offload daemon: 2026-01-01 starting: old\n"
        "ERROR: an old failure\n"
        "--- ml-offload daemon: 2026-01-02 starting: new\n"
        "INFO: Application startup complete.\n"
        "ERROR:    [Errno 98] error while attempting to bind: address already in use\n"
        "INFO:     Application shutdown complete.\n"
        "ERROR: Unclosed client session\n"
    )
    assert first_error(log).endswith("address already in use")
    assert first_error(tmp_path / "missing.log") == "(no log)"


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        daemon = Daemon(tmp_path)
        with pytest.raises(DaemonError, match=f"already listens on http://127.0.0.1:{port}"):
            daemon.start(host="0.0.0.0", port=port, timeout_s=60)
    assert not daemon.log_path.exists() and daemon.running() is None  # nothing was spawned
