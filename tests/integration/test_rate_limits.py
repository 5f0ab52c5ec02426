"""Rate limits at the gateway: requests per minute answered with 429, `Retry-After` and OpenAI's
`x-ratelimit-*` headers; tokens reserved before a request so that concurrent requests never pass
the limit, and settled from the real usage (streams included); and two gateways sharing one
real Redis and one limit. The model is `fake_upstream.FakeOpenAI` (OpenAI's wire format)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ml_offload.security.quota import estimate_tokens
from tests.integration.conftest import GatewayFactory, redis_server, stop
from tests.integration.fake_upstream import FakeOpenAI, Reply, fake_openai
from tests.integration.test_auth import ADMIN, CHAT, Keys, answer, start

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(answer) as f:
        yield f


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def test_requests_per_minute(gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys) -> None:
    key = keys.create("--name", "slow", "--rpm", "3")
    gw = start(gateway_factory, fake, keys)
    gw.use_key(key)
    first = gw.http.post("/v1/chat/completions", json=CHAT)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    for _ in range(2):
        assert gw.http.post("/v1/chat/completions", json=CHAT).status_code == 200
    refused = gw.http.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    claude = gw.http.post("/v1/messages", json={**CHAT, "max_tokens": 5})
    assert claude.status_code == 429 and claude.json()["error"]["type"] == "rate_limit_error"


class Held:
    """Answers only once released, so that every admitted request is in flight at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived = 0
        self._lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> Reply:
        with self._lock:
            self.arrived += 1
        self.release.wait(30)
        return answer(request)


def test_concurrent_requests_never_pass_the_token_limit_and_settle_refunds(
    gateway_factory: GatewayFactory, keys: Keys
) -> None:
    key = keys.create("--name", "tokens", "--tpm", "1000")
    held = Held()
    with fake_openai(held) as fake:
        gw = start(gateway_factory, fake, keys)
        headers = {"authorization": f"Bearer {key}"}
        body = {**CHAT, "max_tokens": 100}
        reserved = estimate_tokens("chat", body, 1024)  # "hi" in the template, and max_tokens

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=60) as c:
                sent = [c.post("/v1/chat/completions", json=body) for _ in range(30)]
                tasks = [asyncio.ensure_future(s) for s in sent]
                deadline = time.monotonic() + 30
                while sum(t.done() for t in tasks) + held.arrived < 30:
                    assert time.monotonic() < deadline, "requests neither refused nor in flight"
                    await asyncio.sleep(0.05)
                held.release.set()
                return [(await t).status_code for t in tasks]

        codes = asyncio.run(burst())
        admitted = 1000 // reserved
        assert codes.count(200) == admitted and codes.count(429) == 30 - admitted
        # Each answer used 5 tokens: the rest of each reservation came back, so 900 fit again.
        big = {**CHAT, "max_tokens": 900}
        again = gw.http.post("/v1/chat/completions", json=big, headers=headers)
        assert again.status_code == 200, again.text
        left = 1000 - admitted * 5 - estimate_tokens("chat", big, 1024)
        assert int(again.headers["x-ratelimit-remaining-tokens"]) == left


def test_streams_settle_from_their_usage(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    key = keys.create("--name", "streamer", "--tpm", "1000")
    gw = start(gateway_factory, fake, keys)
    gw.use_key(key)
    for _ in range(3):  # 3 × 901 reserved > 1000: each stream must give back what it did not use
        stream = gw.client.chat.completions.create(**{**CHAT, "max_tokens": 900, "stream": True})  # type: ignore[call-overload]
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "hello"


def wait_for_a_fresh_minute(margin_s: float = 20.0) -> None:
    """Limits count per clock minute: start a burst early enough that it ends in the same one."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.1)


def test_two_gateways_share_a_limit_in_redis(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys, redis_url: str
) -> None:
    key = keys.create("--name", "fleet", "--rpm", "60")
    limits = {"storage_url": redis_url}
    gateways = [start(gateway_factory, fake, keys, limits=limits) for _ in range(2)]
    headers = {"authorization": f"Bearer {key}"}
    wait_for_a_fresh_minute()

    async def spread() -> list[int]:
        clients = [
            httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=60) for gw in gateways
        ]
        try:
            sent = [clients[i % 2].post("/v1/chat/completions", json=CHAT) for i in range(120)]
            return [r.status_code for r in await asyncio.gather(*sent)]
        finally:
            for c in clients:
                await c.aclose()

    codes = asyncio.run(spread())
    assert set(codes) == {200, 429}
    assert abs(codes.count(200) - 60) <= 2, codes.count(200)


def test_a_limit_storage_outage_never_shows_its_password(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    """`closed` (the default): a limited key gets 503 while Redis is down, and neither the
    answer nor the gateway's log shows the storage's password."""
    secret = "hunter2-" + "x" * 12
    key = keys.create("--name", "limited", "--rpm", "100")
    with redis_server(password=secret) as url:
        assert secret in url
        gw = start(gateway_factory, fake, keys, limits={"storage_url": url})
        gw.use_key(key)
        assert gw.http.post("/v1/chat/completions", json=CHAT).status_code == 200
    down = gw.http.post("/v1/chat/completions", json=CHAT)
    assert down.status_code == 503, down.text
    assert down.json()["error"]["type"] == "server_error"
    assert "rate limit storage redis://***@127.0.0.1" in down.json()["error"]["message"]
    assert secret not in down.text
    assert secret not in gw.http.get("/metrics").text
    stop(gw)  # the log is complete once the gateway has exited
    log = gw.log.read_text()
    assert "redis://***@" in log and secret not in log


def test_a_limit_storage_outage_with_open_admits_unlimited(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    """`on_storage_error = "open"`: a gateway starts without its Redis and admits limited keys
    without limits, saying so once in its log (without the password)."""
    secret = "hunter2-" + "y" * 12
    key = keys.create("--name", "limited", "--rpm", "1")
    with redis_server(password=secret) as url:
        pass  # a Redis URL whose server is gone: its port is closed now
    limits = {"storage_url": url, "on_storage_error": "open"}
    gw = start(gateway_factory, fake, keys, limits=limits)
    gw.use_key(key)
    for _ in range(3):  # past the 1 request per minute: nothing counts while Redis is down
        answered = gw.http.post("/v1/chat/completions", json=CHAT)
        assert answered.status_code == 200, answered.text
        assert "x-ratelimit-limit-requests" not in answered.headers
    stop(gw)
    log = gw.log.read_text()
    assert secret not in log
    assert log.count("admitting requests without limits") == 1


def test_guard_refusals_are_counted_in_metrics(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    key = keys.create("--name", "scoped", "--rpm", "2", "--models", "m")
    gw = start(gateway_factory, fake, keys, admin_key=ADMIN)
    assert gw.http.post("/v1/chat/completions", json=CHAT).status_code == 401  # no key
    gw.use_key(key)
    assert gw.http.post("/v1/chat/completions", json=CHAT).status_code == 200
    other = gw.http.post("/v1/chat/completions", json={**CHAT, "model": "other"})
    assert other.status_code == 403  # out of its scope
    assert gw.http.post("/v1/chat/completions", json=CHAT).status_code == 429  # third this minute
    gw.use_key(ADMIN)  # no limits of its own
    metrics = gw.http.get("/metrics").text
    for reason, status in (
        ("invalid_api_key", 401),
        ("permission_denied", 403),
        ("rate_limit_exceeded", 429),
    ):
        assert f'mlo_guard_refusals_total{{reason="{reason}",status="{status}"}} 1.0' in metrics
