"""WebSocket streaming at `/ws/inference` through the `websockets` client, on the real engine."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import MODEL, Gateway

pytestmark = pytest.mark.integration

LONG = {"max_tokens": 400, "ignore_eos": True}


def _ws(gateway: Gateway) -> ClientConnection:
    return connect(gateway.url.replace("http://", "ws://") + "/ws/inference", open_timeout=10)


def _recv(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=30))
    return message


def _until(ws: ClientConnection, done: Any) -> list[dict[str, Any]]:
    got = []
    while True:
        got.append(_recv(ws))
        if done(got[-1]):
            return got


def test_two_requests_one_cancelled_mid_stream(gateway: Gateway) -> None:
    with _ws(gateway) as ws:
        ws.send(json.dumps({"id": "long", "model": MODEL, "prompt": "Once", "parameters": LONG}))
        ws.send(
            json.dumps(
                {
                    "id": 2,
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Tell a long story."}],
                    "parameters": {"max_tokens": 12},
                }
            )
        )
        seen: list[dict[str, Any]] = []
        while sum(m.get("id") == "long" and "delta" in m for m in seen) < 3:
            seen.append(_recv(ws))
        assert gateway.model()["in_flight"] == 2
        ws.send(json.dumps({"id": "long", "cancel": True}))
        seen += _until(ws, lambda m: m.get("id") == 2 and m.get("done"))
        assert {"id": "long", "cancelled": True} in seen
        after = seen.index({"id": "long", "cancelled": True})
        assert not [m for m in seen[after:] if m.get("id") == "long"][1:]
    short = [m for m in seen if m.get("id") == 2]
    assert all(set(m) == {"id", "delta"} for m in short[:-1]) and len(short) > 2
    done = short[-1]
    assert done["finish_reason"] in ("stop", "length") and done["usage"]["completion_tokens"] > 0
    engine = gateway.engine()
    deadline = time.monotonic() + 5
    busy = True
    while time.monotonic() < deadline:
        busy = any(s.get("is_processing") for s in engine.get("/slots").json())
        if gateway.model()["in_flight"] == 0 and not busy:
            break
        time.sleep(0.05)
    assert gateway.model()["in_flight"] == 0, "the cancelled request kept its slot"
    assert not busy, "the engine kept generating for a cancelled request"


def test_closing_the_connection_frees_slots(gateway: Gateway) -> None:
    with _ws(gateway) as ws:
        ws.send(json.dumps({"id": 1, "model": MODEL, "prompt": "Once", "parameters": LONG}))
        _until(ws, lambda m: "delta" in m)
    deadline = time.monotonic() + 5
    while gateway.model()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.model()["in_flight"] == 0


@pytest.mark.parametrize(
    ("message", "status", "request_id"),
    [
        ("{not json", 400, None),
        ('["a"]', 400, None),
        ('{"model": "smollm2-135m", "prompt": "x"}', 400, None),
        ('{"id": 7, "model": "smollm2-135m"}', 400, 7),
        ('{"id": 7, "model": "smollm2-135m", "prompt": "x", "stream": true}', 400, 7),
        ('{"id": "n", "model": "no-such-model", "prompt": "x"}', 404, "n"),
        ('{"id": "c", "cancel": true}', 400, "c"),
    ],
)
def test_errors(gateway: Gateway, message: str, status: int, request_id: Any) -> None:
    with _ws(gateway) as ws:
        ws.send(message)
        reply = _recv(ws)
        assert reply["id"] == request_id and reply["error"]["status"] == status
        assert reply["error"]["message"]
        # the connection stays usable
        ws.send(
            json.dumps(
                {"id": "ok", "model": MODEL, "prompt": "Hi", "parameters": {"max_tokens": 2}}
            )
        )
        assert _until(ws, lambda m: m.get("done"))[-1]["usage"]["completion_tokens"] > 0
