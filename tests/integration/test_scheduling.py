"""On-demand loading, swapping, idle unload, eviction at the cap, over-capacity answers, the CLI,
and no engine outliving its gateway: real gateways and real engines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import GatewayFactory, pid_alive

pytestmark = pytest.mark.integration


def two_names(path: Path, **extra: object) -> list[dict[str, object]]:
    """The same GGUF under two names with different settings."""
    return [
        {"name": "small-ctx", "path": path, "ctx_size": 256, "parallel": 1, **extra},
        {"name": "big-ctx", "path": path, "ctx_size": 1024, "parallel": 2, **extra},
    ]


def ask(gw_client: object, model: str) -> str:
    chat = gw_client.chat.completions.create(  # type: ignore[attr-defined]
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    return str(chat.choices[0].message.content)


def wait_for(predicate: object, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_two_models_swapped_on_demand(gateway_factory: GatewayFactory, smollm_path: Path) -> None:
    gw = gateway_factory(
        demo_model=False, scheduler={"max_loaded_models": 1}, models=two_names(smollm_path)
    )
    ask(gw.client, "small-ctx")
    first = gw.model("small-ctx")
    assert first["state"] == "ready" and gw.model("big-ctx")["state"] == "stopped"
    ask(gw.client, "big-ctx")
    assert gw.model("big-ctx")["state"] == "ready" and gw.model("small-ctx")["state"] == "stopped"
    assert wait_for(lambda: not pid_alive(first["pid"])), "the swapped-out engine still runs"
    ask(gw.client, "small-ctx")
    assert gw.model("small-ctx")["state"] == "ready"


def test_idle_ttl_unloads(gateway_factory: GatewayFactory, smollm_path: Path) -> None:
    gw = gateway_factory(
        demo_model=False,
        models=[
            {"name": "brief", "path": smollm_path, "ttl_s": 1},
            {"name": "stays", "path": smollm_path, "ttl_s": 0},
        ],
    )
    ask(gw.client, "brief")
    pid = gw.model("brief")["pid"]  # before anything slow: its 1 s TTL is already running
    assert pid is not None
    ask(gw.client, "stays")
    assert wait_for(lambda: gw.model("brief")["state"] == "stopped", 5)
    assert not pid_alive(pid)
    time.sleep(0.5)
    assert gw.model("stays")["state"] == "ready"  # ttl 0: never unloaded when idle


def test_lru_eviction_at_the_cap(gateway_factory: GatewayFactory, smollm_path: Path) -> None:
    models = [
        {"name": n, "path": smollm_path, "ctx_size": 256, "parallel": 1} for n in ("m1", "m2", "m3")
    ]
    gw = gateway_factory(demo_model=False, scheduler={"max_loaded_models": 2}, models=models)
    ask(gw.client, "m1")
    ask(gw.client, "m2")
    ask(gw.client, "m1")  # m2 is now the least recently used
    ask(gw.client, "m3")
    states = {n: gw.model(n)["state"] for n in ("m1", "m2", "m3")}
    assert states == {"m1": "ready", "m2": "stopped", "m3": "ready"}
    metrics = gw.http.get("/metrics").text
    assert 'mlo_evictions_total{model="m2",reason="evicted"} 1.0' in metrics


def test_pinned_model_survives_eviction(gateway_factory: GatewayFactory, smollm_path: Path) -> None:
    models = [
        {"name": n, "path": smollm_path, "ctx_size": 256, "parallel": 1} for n in ("p", "q", "r")
    ]
    gw = gateway_factory(demo_model=False, scheduler={"max_loaded_models": 2}, models=models)
    assert gw.http.post("/models/p/load", json={"pin": True}).json()["pinned"] is True
    ask(gw.client, "q")
    ask(gw.client, "r")
    assert gw.model("p")["state"] == "ready" and gw.model("q")["state"] == "stopped"


def test_over_capacity_is_429_with_retry_after(
    gateway_factory: GatewayFactory, smollm_path: Path
) -> None:
    gw = gateway_factory(
        demo_model=False,
        scheduler={"queue_size": 0},
        models=[{"name": "one", "path": smollm_path, "parallel": 1, "ctx_size": 512}],
    )
    ask(gw.client, "one")
    body = {
        "model": "one",
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 300,
        "stream": True,
        "ignore_eos": True,
    }
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as held:
        lines = held.iter_lines()  # keep the iterator: dropping it closes the stream
        next(lines)
        assert gw.model("one")["in_flight"] == 1
        resp = gw.http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
    assert resp.status_code == 429
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.json()["error"]["type"] == "rate_limit_error"


def test_queued_requests_wait_for_a_slot(
    gateway_factory: GatewayFactory, smollm_path: Path
) -> None:
    gw = gateway_factory(
        demo_model=False, models=[{"name": "one", "path": smollm_path, "parallel": 1}]
    )
    results: list[int] = []

    def call() -> None:
        r = gw.http.post(
            "/v1/chat/completions",
            json={"model": "one", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        results.append(r.status_code)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 4  # one engine start shared, the rest queued, none refused


def test_metrics_and_health(gateway_factory: GatewayFactory, smollm_path: Path) -> None:
    gw = gateway_factory()
    ask(gw.client, "smollm2-135m")
    text = gw.http.get("/metrics").text
    for family in (
        "mlo_requests_total",
        'gen_ai_server_request_duration_seconds_bucket{error_type="",gen_ai_operation_name="chat"',
        'gen_ai_client_token_usage_count{gen_ai_operation_name="chat"',
        "mlo_queue_depth",
        "mlo_models_loaded",
        "mlo_model_load_seconds_count",
    ):
        assert family in text, family
    health = gw.http.get("/health").json()
    assert health["status"] == "ok" and health["models"]["loaded"] == 1
    head = gw.http.head("/health")  # what load balancers send
    assert head.status_code == 200 and head.content == b""
    vram = gw.http.get("/vram/status").json()
    assert vram["monitor"] == "none" and vram["models"][0]["estimate_bytes"] > 90 * 2**20


def mlo(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", *args, "--url", url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_against_the_gateway(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    ls = mlo(gw.url, "models", "ls")
    assert ls.returncode == 0 and "smollm2-135m" in ls.stdout and "Q4_1" in ls.stdout
    assert "no models loaded" in mlo(gw.url, "ps").stdout
    load = mlo(gw.url, "load", "smollm2-135m")
    assert load.returncode == 0 and "ready" in load.stdout
    ps = mlo(gw.url, "ps")
    assert "smollm2-135m" in ps.stdout and "ready" in ps.stdout
    unload = mlo(gw.url, "unload", "--all")
    assert unload.returncode == 0 and "unloaded 1 model" in unload.stdout
    missing = mlo(gw.url, "load", "nope")
    assert (
        missing.returncode == 1
        and "not found" in missing.stderr
        and "Traceback" not in missing.stderr
    )


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    down = mlo("http://127.0.0.1:9", "ps")
    assert down.returncode == 1 and "cannot reach the gateway" in down.stderr
    assert "Traceback" not in down.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[scheduler]\nmax_loaded_models = 0\n")
    serve = subprocess.run(
        [sys.executable, "-m", "ml_offload.cli.main", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 2 and "scheduler.max_loaded_models" in serve.stderr
    assert "Traceback" not in serve.stderr


def test_engines_die_with_a_killed_gateway(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    ask(gw.client, "smollm2-135m")
    pid = gw.model()["pid"]
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait()
    assert wait_for(lambda: not pid_alive(pid), 10), "an orphaned engine kept running"
    with pytest.raises(httpx.TransportError):
        gw.http.get("/health")
