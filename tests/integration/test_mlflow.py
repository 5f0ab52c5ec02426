"""`mlo run --track` and `mlo health --track` against a real MLflow tracking server on loopback
(`mlflow server`), read back with MLflow's own client."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MODEL, GatewayFactory, _free_port

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'ml-offload[mlflow]'")


@contextlib.contextmanager
def mlflow_server(tmp: Path) -> Iterator[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    args = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp / "artifacts"),
    ]
    log = tmp / "mlflow.log"
    proc = subprocess.Popen(
        args, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start:\n" + log.read_text()[-2000:])
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def mlo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
    )


def test_track_without_a_tracking_uri_is_one_line_with_the_fix(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", "run", "-p", "Hi", "--track"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0
    assert "MLFLOW_TRACKING_URI" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_run_and_health_are_logged_to_a_real_tracking_server(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gw = gateway_factory()
    results = tmp_path / "results.jsonl"
    with mlflow_server(tmp_path / "mlflow") as url:
        env = {"MLFLOW_TRACKING_URI": url}
        ran = mlo(
            "run",
            "--url",
            gw.url,
            "-p",
            "Hi",
            "--max-tokens",
            "4",
            "-o",
            str(results),
            "--track",
            env=env,
        )
        assert ran.returncode == 0, ran.stderr
        checked = mlo("health", "--url", gw.url, "-n", "1", "--max-tokens", "4", "--track", env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        client = mlflow.MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("ml-offload")
        runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
        assert runs.keys() == {f"run {MODEL}", "health"}
        run = runs[f"run {MODEL}"]
        assert run.data.params["model"] == MODEL and run.data.params["max_tokens"] == "4"
        assert run.data.metrics["answered"] == 1 and run.data.metrics["latency_ms_p50"] > 0
        assert run.data.metrics["ttft_ms_p50"] > 0 and run.data.metrics["tokens_per_s_p50"] > 0
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["results.jsonl"]
        health = runs["health"].data
        assert health.metrics["models_loaded"] == 1 and health.metrics[f"{MODEL}.errors"] == 0
        assert health.metrics[f"{MODEL}.latency_ms_p50"] > 0
