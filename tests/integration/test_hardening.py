"""Hardening of a real gateway: security headers, CORS only when configured, the body cap on
every route (WebSocket messages included), and start-up refusals in one line.

The model behind the gateway is the scripted FakeOpenAI (tests/integration/fake_upstream.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.integration.conftest import Gateway, GatewayFactory, _free_port, write_config
from tests.integration.fake_upstream import FakeOpenAI, Reply, fake_openai

LIMIT = 4096
OK = {
    "id": "chatcmpl-fake",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(lambda request: Reply(body=OK)) as server:
        yield server


@pytest.fixture
def gw(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> Gateway:
    return gateway_factory(
        demo_model=False,
        server={"max_body_bytes": LIMIT},
        models=[{"name": "m", "url": fake.url}],
    )


def assert_hardened(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "strict-transport-security" not in response.headers  # plain HTTP: no HSTS


def test_security_headers_on_answers_and_errors(gw: Gateway) -> None:
    health = gw.http.get("/health")
    assert health.status_code == 200
    assert_hardened(health)
    assert health.headers["cache-control"] == "no-store"
    chat = gw.http.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert chat.status_code == 200, chat.text
    assert_hardened(chat)
    one = [{"role": "user", "content": "x"}]
    missing = gw.http.post("/v1/chat/completions", json={"model": "nope", "messages": one})
    assert missing.status_code == 404, missing.text
    assert_hardened(missing)
    invalid = gw.http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert invalid.status_code == 400, invalid.text
    assert_hardened(invalid)
    streamed = gw.http.post(
        "/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    )
    assert_hardened(streamed)  # a stream keeps its own cache-control, once
    assert streamed.headers.get_list("cache-control") == ["no-cache"]


def test_no_cors_unless_configured(gw: Gateway, gateway_factory: GatewayFactory) -> None:
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    closed = gw.http.options("/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    simple = gw.http.get("/health", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in simple.headers

    opened = gateway_factory(
        demo_model=False, security={"cors_origins": ["https://app.example.com"]}
    )
    allowed = opened.http.options("/v1/chat/completions", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert_hardened(allowed)
    other = opened.http.options(
        "/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example.net"}
    )
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers


def test_body_cap_on_every_route_in_the_callers_dialect(gw: Gateway) -> None:
    big = b"{" + b" " * LIMIT + b"}"
    headers = {"content-type": "application/json"}
    openai = gw.http.post("/v1/chat/completions", content=big, headers=headers)
    assert openai.status_code == 413
    assert "server.max_body_bytes" in openai.json()["error"]["message"]
    assert_hardened(openai)
    ollama = gw.http.post("/api/chat", content=big, headers=headers)
    assert ollama.status_code == 413
    assert "server.max_body_bytes" in ollama.json()["error"]
    anthropic = gw.http.post("/v1/messages", content=big, headers=headers)
    assert anthropic.status_code == 413 and anthropic.json()["type"] == "error"
    admin = gw.http.post("/models/m/load", content=big, headers=headers)  # a FastAPI-parsed body
    assert admin.status_code == 413

    def chunks() -> Iterator[bytes]:  # no content-length: counted as it arrives
        yield b'{"model": "m", "messages": [], "pad": "'
        for _ in range(8):
            yield b"x" * 1024
        yield b'"}'

    chunked = gw.http.post("/v1/chat/completions", content=chunks(), headers=headers)
    assert chunked.status_code == 413, chunked.text
    fine = gw.http.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert fine.status_code == 200


def test_websocket_message_over_the_cap_closes_the_connection(gw: Gateway) -> None:
    url = gw.url.replace("http://", "ws://") + "/ws/inference"
    with connect(url, open_timeout=10, max_size=None) as ws:
        ws.send('{"id": 1, "type": "cancel", "pad": "' + "x" * (2 * LIMIT) + '"}')
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big


def test_upstream_time_is_capped(gateway_factory: GatewayFactory) -> None:
    def slow(request: dict[str, Any]) -> Reply:
        time.sleep(3)
        return Reply(body=OK)

    with fake_openai(slow) as server:
        gw = gateway_factory(
            demo_model=False,
            server={"upstream_timeout_s": 0.3},
            models=[{"name": "m", "url": server.url}],
        )
        answer = gw.http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        )
    assert answer.status_code == 504, answer.text
    assert "did not answer in time" in answer.json()["error"]["message"]


# Start-up refusals: `mlo serve` run by hand, to watch its exit and output.


def serve(tmp_path: Path, *args: str, **config: Any) -> tuple[subprocess.Popen[bytes], int]:
    cfg = tmp_path / "config.toml"
    write_config(cfg, tmp_path / "data", {"demo_model": False, **config})
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLO_", "LLAMACPP_URL"))}
    cmd = [sys.executable, "-m", "ml_offload.cli.main", "serve", "--config", str(cfg)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    return proc, port


def refused(proc: subprocess.Popen[bytes]) -> list[str]:
    output, _ = proc.communicate(timeout=60)
    text = output.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if "ERROR" in line or "error" in line]


def test_non_loopback_bind_without_auth_is_refused_in_one_line(tmp_path: Path) -> None:
    proc, _ = serve(tmp_path, "--host", "0.0.0.0")
    errors = refused(proc)
    reason = [line for line in errors if "refusing to listen on 0.0.0.0" in line]
    assert len(reason) == 1, errors
    assert "--allow-insecure" in reason[0] and "MLO_ADMIN_KEY" in reason[0]


def test_allow_insecure_starts_on_a_non_loopback_bind(tmp_path: Path) -> None:
    proc, port = serve(tmp_path, "--host", "0.0.0.0", "--allow-insecure")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0].decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the gateway did not answer with --allow-insecure")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_unreachable_database_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    proc, _ = serve(
        tmp_path, storage={"database_url": f"postgresql://u:p@127.0.0.1:{_free_port()}/db"}
    )
    errors = refused(proc)
    assert len([line for line in errors if "cannot start: " in line]) == 1, errors
    assert any("storage.database_url" in line for line in errors), errors
