"""Engines behind the gateway only (issue 12): each engine we start requires its own random API
key, which only the gateway holds and sends; a direct request to the engine's port is refused."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MODEL, Gateway, engine_key

pytestmark = pytest.mark.integration
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def test_an_engine_refuses_requests_without_the_gateways_key(gateway: Gateway) -> None:
    assert gateway.http.post("/v1/chat/completions", json=CHAT).status_code == 200
    m = gateway.model()
    engine = m["base_url"]
    assert httpx.post(f"{engine}/v1/chat/completions", json=CHAT).status_code == 401
    wrong = {"authorization": "Bearer not-the-key"}
    assert httpx.post(f"{engine}/v1/chat/completions", json=CHAT, headers=wrong).status_code == 401
    assert httpx.get(f"{engine}/slots").status_code == 401
    key = engine_key(m["pid"])
    assert key.removeprefix("Bearer ") not in Path(f"/proc/{m['pid']}/cmdline").read_text()
    right = {"authorization": key}
    assert httpx.post(f"{engine}/v1/chat/completions", json=CHAT, headers=right).status_code == 200


def test_each_engine_start_gets_a_new_key(gateway: Gateway) -> None:
    gateway.http.post("/v1/chat/completions", json=CHAT).raise_for_status()
    first = engine_key(gateway.model()["pid"])
    gateway.http.post(f"/models/{MODEL}/unload").raise_for_status()
    assert gateway.http.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert engine_key(gateway.model()["pid"]) != first
