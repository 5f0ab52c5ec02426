"""A real Prometheus (Debian's `prometheus`) scrapes a real gateway serving the real model, and
its HTTP query API answers the GenAI series with the OpenTelemetry attributes as labels."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.conftest import MODEL, Gateway, GatewayFactory, _free_port

SCRAPE_S = 1


@contextlib.contextmanager
def prometheus(tmp: Path, target: str) -> Iterator[str]:
    """A Prometheus on a free loopback port scraping `target` (host:port) every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_S}s\n"
        "scrape_configs:\n  - job_name: ml-offload\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    listen = f"127.0.0.1:{_free_port()}"
    log = tmp / "prometheus.log"
    args = [f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}"]
    proc = subprocess.Popen(
        [binary, *args, f"--web.listen-address={listen}"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://{listen}"
    finally:
        proc.terminate()
        proc.wait(20)


def query(url: str, promql: str, timeout_s: float = 90) -> list[dict[str, Any]]:
    """The first non-empty answer of an instant query (Prometheus scrapes every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
            result: list[dict[str, Any]] = r.json()["data"]["result"]
        except (httpx.HTTPError, KeyError, ValueError):  # not up yet
            result = []
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def stream_one(gw: Gateway) -> None:
    stream = gw.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
    )
    chunks = list(stream)  # to the end: usage comes last
    assert any(c.choices and c.choices[0].delta.content for c in chunks)


def test_prometheus_scrapes_the_genai_series(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gw = gateway_factory()
    stream_one(gw)
    attrs = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "llama.cpp",
        "gen_ai_request_model": MODEL,
        "gen_ai_response_model": MODEL,
    }
    selector = ",".join(f'{k}="{v}"' for k, v in attrs.items())
    with prometheus(tmp_path / "prometheus", urlsplit(gw.url).netloc) as url:
        (duration,) = query(url, f"gen_ai_server_request_duration_seconds_count{{{selector}}}")
        assert duration["metric"]["job"] == "ml-offload" and float(duration["value"][1]) == 1
        assert "error_type" not in duration["metric"]  # empty on success: absent in Prometheus
        (ttft,) = query(url, f"gen_ai_server_time_to_first_token_seconds_count{{{selector}}}")
        assert float(ttft["value"][1]) == 1
        (upstream,) = query(url, f"gen_ai_client_operation_duration_seconds_count{{{selector}}}")
        assert float(upstream["value"][1]) == 1
        tokens = query(url, f"gen_ai_client_token_usage_sum{{{selector}}}")
        by_type = {t["metric"]["gen_ai_token_type"]: float(t["value"][1]) for t in tokens}
        assert by_type.keys() == {"input", "output"} and by_type["input"] > 0
        assert 0 < by_type["output"] <= 4
        (loaded,) = query(url, "mlo_models_loaded")  # the gateway's own gauges are there too
        assert float(loaded["value"][1]) == 1
