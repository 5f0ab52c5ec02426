"""`mlo run`, `export`, `health` and `server` with the real SmolLM2 engine, through real
`mlo` processes; nothing is left running afterwards."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ml_offload.cli.commands import app
from tests.integration.conftest import MODEL, Gateway, _free_port, pid_alive, write_config

PROMPTS = ["Say hello.", "Name a colour.", "What is 2 + 2?", "Name a fruit."]


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLO_", "XDG_")) and k not in ("LLAMACPP_URL", "TF_MODELS")
    }
    env |= {
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    return env | extra


def mlo(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def config(tmp_path: Path, port: int, **storage: Any) -> Path:
    path = tmp_path / "config.toml"
    write_config(path, tmp_path / "data", {"server": {"port": port}, "storage": storage})
    return path


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def gateway_processes(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (a test's own config path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and pid_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def test_run_then_export_every_format(tmp_path: Path, gateway: Gateway) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    results = tmp_path / "results.json"
    env = env_for(tmp_path)
    done = mlo(env, "run", "--url", gateway.url, "--prompts", str(prompts), "--max-tokens", "8",
               "--output", str(results))  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(results.read_text())["results"]
    assert [r["prompt"] for r in data] == PROMPTS
    for r in data:
        assert r["model"] == MODEL and r["answer"] and r["error"] is None
        assert 0 < r["completion_tokens"] <= 8 and r["prompt_tokens"] > 0
        assert 0 < r["ttft_ms"] <= r["latency_ms"]

    runner = CliRunner()
    for fmt in ("md", "txt", "jsonl", "csv"):
        result = runner.invoke(app, ["export", str(results), "--format", fmt])
        assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(results.with_suffix(".csv").read_text())))
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["answer"] for r in rows] == [r["answer"] for r in data]
    lines = results.with_suffix(".jsonl").read_text().splitlines()
    assert [json.loads(line)["answer"] for line in lines] == [r["answer"] for r in data]
    md = results.with_suffix(".md").read_text().splitlines()
    assert len(md) == 2 + len(PROMPTS)
    assert md[0].startswith("| # | prompt | answer |") and set(md[1]) <= {"|", "-"}
    assert all(line.startswith(f"| {i + 1} | {PROMPTS[i]} |") for i, line in enumerate(md[2:]))
    txt = results.with_suffix(".txt").read_text()
    assert all(f"[{i + 1}] {p}" in txt for i, p in enumerate(PROMPTS))

    direct = tmp_path / "direct.csv"  # run straight to another format
    done = mlo(env, "run", "--url", gateway.url, "-p", "Hi", "--max-tokens", "4", "-o", str(direct))
    assert done.returncode == 0, done.stderr
    (row,) = csv.DictReader(direct.open())
    assert 0 < int(row["completion_tokens"]) <= 4


def test_health_reports_latency_per_loaded_model(tmp_path: Path, gateway: Gateway) -> None:
    gateway.http.post(f"/models/{MODEL}/load")
    done = mlo(env_for(tmp_path), "health", "--url", gateway.url, "--json", "-n", "3",
               "--max-tokens", "8")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"measuring {MODEL}: 3 requests" in done.stderr  # the progress line
    report = json.loads(done.stdout)
    assert report["gateway"]["status"] == "ok"
    assert report["gateway"]["disk"]["free_bytes"] > 0 and report["gateway"]["disk"]["low"] in (
        True,
        False,
    )
    assert isinstance(report["vram"]["devices"], list)
    (lat,) = report["latency"]
    assert lat["model"] == MODEL and lat["requests"] == 3 and lat["errors"] == []
    assert 0 < lat["ttft_ms"]["p50"] <= lat["ttft_ms"]["p95"]
    assert lat["tokens_per_s"]["p50"] > 0
    args = ["health", "--url", gateway.url, "-n", "1", "--max-tokens", "4"]
    table = CliRunner().invoke(app, args, env={"COLUMNS": "120"})
    assert table.exit_code == 0, table.output
    assert "TTFT" in table.output and MODEL in table.output


def test_health_measures_only_when_asked(tmp_path: Path, gateway: Gateway) -> None:
    gateway.http.post(f"/models/{MODEL}/load")
    done = mlo(env_for(tmp_path), "health", "--url", gateway.url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["latency"] == [] and "measuring" not in done.stderr
    table = mlo(env_for(tmp_path), "health", "--url", gateway.url)
    assert table.returncode == 0 and "not measured (mlo health --measure)" in table.stdout
    measured = mlo(env_for(tmp_path), "health", "--url", gateway.url, "--json", "--measure",
                   "--max-tokens", "4")  # fmt: skip
    assert measured.returncode == 0, measured.stderr
    assert f"measuring {MODEL}: 5 requests" in measured.stderr
    (lat,) = json.loads(measured.stdout)["latency"]
    assert lat["model"] == MODEL and lat["requests"] == 5 and lat["errors"] == []


def test_errors_are_one_line(tmp_path: Path, gateway: Gateway) -> None:
    env = env_for(tmp_path)
    line = one_error_line(mlo(env, "run", "--url", gateway.url, "-m", "nope", "-p", "x"))
    assert "model 'nope' not found" in line
    line = one_error_line(mlo(env, "run", "--url", gateway.url, "-m", MODEL))
    assert "give --prompt TEXT or --prompts FILE" in line
    line = one_error_line(mlo(env, "export", str(tmp_path / "missing.json"), "-f", "md"))
    assert "cannot read" in line
    closed = f"http://127.0.0.1:{_free_port()}"
    line = one_error_line(mlo(env, "health", "--url", closed))
    assert "cannot reach the gateway" in line


def test_run_starts_and_stops_its_own_gateway(tmp_path: Path, smollm_path: Path) -> None:
    cfg = config(tmp_path, _free_port())
    out = tmp_path / "answers.jsonl"
    done = mlo(env_for(tmp_path), "run", "--config", str(cfg), "--prompt", "Say hi",
               "--max-tokens", "4", "--output", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "starting a gateway" in done.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["model"] == MODEL and 0 < row["completion_tokens"] <= 4
    assert gateway_processes(str(cfg)) == []  # the gateway it started is gone
    log = (tmp_path / "state" / "ml-offload" / "run.log").read_text()
    assert "engine_child" not in " ".join(map(str, gateway_processes(str(tmp_path))))
    assert "ready" in log


def test_server_start_status_stop(tmp_path: Path, smollm_path: Path) -> None:
    port = _free_port()
    cfg = config(tmp_path, port, low_disk_bytes=2**62)  # every disk is "low" then
    env = env_for(tmp_path)
    line = one_error_line(mlo(env, "server", "stop"))
    assert "not running" in line

    started = mlo(env, "server", "start", "--config", str(cfg))
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    assert url in started.stdout
    try:
        pid_file = tmp_path / "state" / "ml-offload" / "gateway.pid"
        daemon_pid = json.loads(pid_file.read_text())["pid"]
        again = one_error_line(mlo(env, "server", "start", "--config", str(cfg)))
        assert "already running" in again
        loaded = httpx.post(f"{url}/models/{MODEL}/load", timeout=60).json()
        engine_pid = loaded["pid"]
        status = mlo(env, "server", "status")
        assert status.returncode == 0, status.stderr
        assert f"pid {daemon_pid}" in status.stdout and "1 loaded" in status.stdout
        assert MODEL in status.stdout
        assert "(LOW)" in status.stdout  # the low-disk warning, in /health and in the log
        log = (tmp_path / "state" / "ml-offload" / "gateway.log").read_text()
        assert "WARNING ml_offload: low disk space" in log
        as_json = json.loads(mlo(env, "server", "status", "--json").stdout)
        assert as_json["daemon"]["url"] == url and as_json["health"]["uptime_s"] > 0
    finally:
        stopped = mlo(env, "server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_alive(daemon_pid) and not pid_alive(engine_pid)
    assert not pid_file.exists()
    assert gateway_processes(str(cfg)) == []
    line = one_error_line(mlo(env, "server", "status"))
    assert "not running" in line

    pid_file.write_text(
        json.dumps({"pid": daemon_pid, "url": url, "started_at": 0, "log_path": ""})
    )
    assert "not running" in one_error_line(mlo(env, "server", "status"))  # stale pid file
    assert not pid_file.exists()


def test_ctrl_c_stops_cleanly_and_keeps_finished_results(tmp_path: Path, gateway: Gateway) -> None:
    prompts = tmp_path / "many.txt"
    prompts.write_text("\n".join(f"Count to {i}." for i in range(30)) + "\n")
    out = tmp_path / "partial.json"
    args = ["run", "--url", gateway.url, "--prompts", str(prompts), "--concurrency", "1",
            "--max-tokens", "32", "--output", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "ml_offload.cli.main", *args],
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while gateway.model()["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few prompts finish, 30 would take seconds
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted: kept" in stderr and "Traceback" not in stderr
    kept = json.loads(out.read_text())["results"]
    assert len(kept) < 30
    assert all(r["error"] is None and r["completion_tokens"] for r in kept)
    deadline = time.monotonic() + 10
    while gateway.model()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.model()["in_flight"] == 0  # the unfinished request was cancelled


@pytest.mark.parametrize(
    "command",
    [
        ["pull"],
        ["server", "start"],
        ["server", "stop"],
        ["server", "restart"],
        ["server", "status"],
        ["run"],
        ["export"],
        ["health"],
        ["ls"],
        ["du"],
        ["clean-cache"],
        ["bootstrap"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage: mlo " + " ".join(command) in result.output
    summary = result.output.split("Usage:", 1)[1].splitlines()[2].strip()
    assert len(summary) > 20  # a sentence that says what it does
