"""Reliability with the real engine: a client's mistake never hurts a deployment, what was
validated is what is forwarded, a dead engine is restarted for the request that finds it dead."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_offload.security.quota import estimate_tokens
from tests.integration.conftest import MODEL, Gateway, GatewayFactory, pid_alive
from tests.integration.test_rate_limits import wait_for_a_fresh_minute

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def pair(gateway_factory: GatewayFactory, smollm_path: Path) -> Gateway:
    """Two local deployments of the demo model, `main` falling back to `backup`."""
    return gateway_factory(
        demo_model=False,
        router={"cooldown_s": 30},
        models=[
            {"name": "main", "path": smollm_path, "fallbacks": ["backup"]},
            {"name": "backup", "path": smollm_path},
        ],
    )


def backends(gw: Gateway) -> dict[str, dict[str, Any]]:
    return {d["model"]: d for d in gw.http.get("/backends").json()["data"]}


def test_bad_tools_are_the_callers_mistake_in_every_dialect(pair: Gateway) -> None:
    for tools in (5, "x", [1]):
        _refused_in_every_dialect(pair, tools)
    for name, d in backends(pair).items():  # neither deployment was blamed nor loaded for it
        assert d["healthy"] is True and d["failures"] == 0, (name, d)
        assert d["state"] == "stopped", (name, d)


def _refused_in_every_dialect(pair: Gateway, tools: Any) -> None:
    openai = pair.http.post(
        "/v1/chat/completions", json={"model": "main", "messages": HI, "tools": tools}
    )
    assert openai.status_code == 400, openai.text
    assert openai.json()["error"]["param"].startswith("tools")
    anthropic = pair.http.post(
        "/v1/messages",
        json={"model": "main", "max_tokens": 4, "messages": HI, "tools": tools},
    )
    assert anthropic.status_code == 400 and anthropic.json()["type"] == "error", anthropic.text
    ollama = pair.http.post(
        "/api/chat", json={"model": "main", "messages": HI, "tools": tools, "stream": False}
    )
    assert ollama.status_code == 400 and "error" in ollama.json(), ollama.text


MALFORMED: list[dict[str, Any]] = [
    {"stop": 5},
    {"seed": "x"},
    {"response_format": 5},
    {"response_format": {"type": "yaml"}},
    {"logit_bias": 3},
    {"tool_choice": 7},
    {"presence_penalty": 3},
    {"stream_options": {"include_usage": "maybe"}},
    {"tools": [{"type": "function", "function": {"name": ""}}]},
]


def test_malformed_fields_are_refused_before_routing(pair: Gateway) -> None:
    for field in MALFORMED:
        body = {"model": "main", "messages": HI, **field}
        resp = pair.http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 400, (field, resp.text)
        assert resp.json()["error"]["param"].split(".")[0] in field
    assert all(d["state"] == "stopped" for d in backends(pair).values())


def test_coerced_max_tokens_is_what_the_engine_honours(pair: Gateway) -> None:
    body = {"model": "main", "messages": HI, "max_tokens": True, "temperature": 0}
    resp = pair.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 1  # `true` validated as 1, sent as 1
    ollama = pair.http.post(
        "/api/generate",
        json={"model": "main", "prompt": "hi", "stream": False, "options": {"num_predict": True}},
    )
    assert ollama.status_code == 200 and ollama.json()["eval_count"] == 1, ollama.text
    bad = pair.http.post(
        "/api/generate",
        json={"model": "main", "prompt": "hi", "stream": False, "options": {"seed": "x"}},
    )
    assert bad.status_code == 400, bad.text
    assert all(d["failures"] == 0 for d in backends(pair).values())


def test_a_request_right_after_the_engine_died_is_served(pair: Gateway) -> None:
    """kill -9 the engine and ask at once, before the gateway has reaped it: the refused
    connection means a dead engine, which is restarted for this request (no 502)."""
    body = {"model": "main", "messages": HI, "max_tokens": 2}
    assert pair.http.post("/v1/chat/completions", json=body).status_code == 200
    for stream in (False, True, False):
        pid = pair.model("main")["pid"]
        os.kill(pid, signal.SIGKILL)
        resp = pair.http.post("/v1/chat/completions", json={**body, "stream": stream})
        assert resp.status_code == 200, resp.text
        assert ("data: [DONE]" in resp.text) if stream else resp.json()["choices"]
        assert not pid_alive(pid) and pair.model("main")["pid"] not in (None, pid)
    assert backends(pair)["backup"]["state"] == "stopped"  # served by `main`, restarted
    assert backends(pair)["main"]["failures"] == 0


def test_sigterm_and_a_clean_shutdown_exit_0(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(demo_model=False)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0, gw.log.read_text()[-2000:]  # systemd reads it: a clean stop


def _exchange(gw: Gateway, raw: bytes, wait_s: float = 20) -> bytes:
    """Send `raw` on a fresh connection; everything the gateway answers until it closes."""
    host, port = gw.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        if raw:
            s.sendall(raw)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _json_error(answer: bytes, status: int) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    assert b"content-type: application/json" in head.lower(), head
    error: dict[str, Any] = json.loads(body)["error"]
    return error


def test_malformed_http_gets_json_and_slow_headers_are_closed(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(demo_model=False, server={"header_timeout_s": 1})
    broken_line = _exchange(gw, b"GARBAGE\x01 / HTTP/9\r\n\r\n")
    assert _json_error(broken_line, 400)["type"] == "invalid_request_error"
    bad_chunks = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    )
    assert "malformed" in _json_error(_exchange(gw, bad_chunks), 400)["message"]
    slow = _exchange(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never ends
    assert _json_error(slow, 408)["code"] == "request_timeout"
    assert _json_error(_exchange(gw, b""), 408)  # one that sends nothing is closed too
    assert gw.http.get("/health").status_code == 200  # whole requests are served as before


def _engine_log(gw: Gateway, name: str) -> str:
    return next(gw.log.parent.rglob(f"logs/{name}.log")).read_text(errors="replace")


def _launches(gw: Gateway, name: str) -> int:
    """Requests the engine took into a slot so far (its log's `launch_slot_` lines)."""
    return _engine_log(gw, name).count("launch_slot_")


def _released_tokens(gw: Gateway, name: str) -> list[int]:
    """Each finished task's context length when the engine stopped it (`release:` lines)."""
    return [int(n) for n in re.findall(r"release: .*n_tokens = (\d+)", _engine_log(gw, name))]


def _send_and_leave(gw: Gateway, body: dict[str, Any]) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    payload = json.dumps(body).encode()
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    return s


def test_departed_clients_leave_the_engine_idle(
    gateway_factory: GatewayFactory, smollm_path: Path
) -> None:
    gw = gateway_factory(
        demo_model=False,
        scheduler={"queue_size": 100},
        models=[{"name": "solo", "path": smollm_path, "parallel": 2, "ctx_size": 2048}],
    )
    long = {"model": "solo", "messages": HI, "max_tokens": 900, "ignore_eos": True}
    assert gw.http.post("/v1/chat/completions", json={**long, "max_tokens": 1}).status_code == 200
    before = _launches(gw, "solo")
    clients = [_send_and_leave(gw, long) for _ in range(40)]  # 2 run, 38 wait for a slot
    clients += [_send_and_leave(gw, {**long, "stream": True}) for _ in range(40)]  # all queued
    deadline = time.monotonic() + 60
    while gw.model("solo")["queued"] < 78 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.model("solo")["queued"] == 78 and gw.model("solo")["in_flight"] == 2
    for c in clients:
        c.close()
    left = time.monotonic()
    engine = gw.engine("solo")
    idle_s = None
    while time.monotonic() - left < 120:
        busy = [s for s in engine.get("/slots").json() if s.get("is_processing")]
        m = gw.model("solo")
        if not busy and m["in_flight"] == 0 and m["queued"] == 0:
            idle_s = time.monotonic() - left
            break
        time.sleep(0.02)
    assert idle_s is not None, "the engine kept working for clients that left"
    sent = _launches(gw, "solo") - before
    stopped_at = _released_tokens(gw, "solo")[-sent:]
    print(
        f"\n80 departed clients (40 waiting for a slot, 40 queued streams): engine idle "
        f"{idle_s:.2f}s after they left; {sent} reached it, stopped at {stopped_at} tokens"
    )
    assert sent <= 4, f"{sent} requests of departed clients were sent to the engine"
    assert all(n < 900 for n in stopped_at), "the engine finished answers nobody would read"


PROMPTS = [  # English, code, other scripts, several messages: the template counts in each
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "Explain in one sentence why the sky is blue."}],
    [{"role": "user", "content": "def f(x):\n    return {k: v for k, v in x.items() if v}"}],
    [{"role": "user", "content": "Übersetze: 東京は日本の首都です。 Привет, мир! 🚀"}],
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name three colours."},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "And three more?"},
    ],
    [{"role": "user", "content": "x.y,z;a:b|c&d^e~f" * 4}],
]


def test_concurrent_requests_never_pass_a_token_limit(gateway_factory: GatewayFactory) -> None:
    """18 requests at once against the model's 1,000 tokens a minute: each reservation is an
    upper bound of what the engine really counts (prompt through the chat template, and the
    answer), so what the answered requests used never passes the limit."""
    limit = 1000
    gw = gateway_factory(security={"limits": {"model_tpm": {MODEL: limit}}})
    bodies = [
        {"model": MODEL, "messages": PROMPTS[i % len(PROMPTS)], "max_tokens": 16} for i in range(18)
    ]
    wait_for_a_fresh_minute()

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gw.url, timeout=300) as c:
            sent = [c.post("/v1/chat/completions", json=b) for b in bodies]
            return list(await asyncio.gather(*sent))

    answers = asyncio.run(burst())
    used_total = 0
    for body, resp in zip(bodies, answers, strict=True):
        reserved = estimate_tokens("chat", body, 1024)
        if resp.status_code != 200:
            assert resp.status_code == 429, resp.text
            print(f"reserved {reserved:4d}  refused (429)")
            continue
        usage = resp.json()["usage"]
        used = usage["prompt_tokens"] + usage["completion_tokens"]
        used_total += used
        print(f"reserved {reserved:4d}  used {used:4d} (prompt {usage['prompt_tokens']})")
        assert used <= reserved, (body["messages"], usage)
    print(f"answered {sum(r.status_code == 200 for r in answers)}/18, used {used_total}/{limit}")
    assert 0 < used_total <= limit
