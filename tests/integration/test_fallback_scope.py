"""Scopes and limits follow the deployment that answers (issue 12), through a real gateway: a
local model whose file is gone falls back to a cloud-like provider (OpenAI's wire format
on loopback, `fake_upstream.FakeOpenAI`). A key for the local model, or for `local:*`, is never
answered by the fallback, and says so; a key for both is, the audit event naming the fallback;
per-model limits are charged to the deployment that answered, not to the one asked for."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Gateway, GatewayFactory
from tests.integration.fake_upstream import FakeOpenAI, Reply, fake_openai
from tests.integration.test_fallback import answer

pytestmark = pytest.mark.integration
ADMIN = "fallback-scope-admin-" + "Q8w3Zr7K" * 4


@pytest.fixture
def cloud() -> Iterator[FakeOpenAI]:
    with fake_openai(lambda request: Reply(body=answer("from the cloud"))) as fake:
        yield fake


def gateway(
    factory: GatewayFactory, tmp_path: Path, cloud: FakeOpenAI, **limits: Any
) -> tuple[Gateway, Path]:
    gone = tmp_path / "gone.gguf"  # the local model's file is missing: it fails at once
    audit = tmp_path / "audit.jsonl"
    gw = factory(
        demo_model=False,
        router={"cooldown_s": 0},  # the primary is tried every time
        security={
            "admin_key": ADMIN,
            "audit": {"path": audit, "flush_interval_s": 0.05, "fsync": False},
            "limits": limits,
        },
        models=[
            {"name": "mine", "path": gone, "fallbacks": ["theirs"]},
            {"name": "theirs", "backend": "openai", "url": cloud.url, "api_key": "sk-cloud"},
        ],
    )
    return gw, audit


def key(gw: Gateway, name: str, *models: str) -> str:
    body = {"name": name, "models": list(models)}
    created = gw.http.post("/admin/keys", json=body, headers={"authorization": f"Bearer {ADMIN}"})
    assert created.status_code == 201, created.text
    secret: str = created.json()["key"]
    return secret


def chat(gw: Gateway, secret: str) -> httpx.Response:
    body = {"model": "mine", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return gw.http.post(
        "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
    )


def events(path: Path, key_name: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(found) < count:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [r["event"] for r in map(json.loads, lines) if "event" in r]
        found = [e for e in found if e.get("key_name") == key_name]
        time.sleep(0.05)
    return found


def test_a_scoped_key_is_not_answered_by_a_fallback_outside_its_scope(
    gateway_factory: GatewayFactory, tmp_path: Path, cloud: FakeOpenAI
) -> None:
    gw, audit = gateway(gateway_factory, tmp_path, cloud)
    for name, scope in (("mine-only", "mine"), ("local-only", "local:*")):
        refused = chat(gw, key(gw, name, scope))
        assert refused.status_code == 503, refused.text  # the primary's failure, said whole
        message = refused.json()["error"]["message"]
        assert "model 'mine' is unavailable: model file" in message
        assert "may not use 'theirs', the fallback of 'mine'" in message
        [event] = events(audit, name, 1)
        assert event["status"] == 503
    assert cloud.requests == []  # nothing of those requests left the machine

    answered = chat(gw, key(gw, "both", "mine", "openai:*"))
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == "from the cloud"
    assert len(cloud.requests) == 1
    [event] = events(audit, "both", 1)
    assert event["model"] == "mine" and event["backend"] == "theirs" and event["status"] == 200


def test_per_model_limits_are_charged_to_the_deployment_that_answers(
    gateway_factory: GatewayFactory, tmp_path: Path, cloud: FakeOpenAI
) -> None:
    if time.time() % 60 > 45:  # keep the three requests in one limit window
        time.sleep(61 - time.time() % 60)
    gw, _ = gateway(gateway_factory, tmp_path, cloud, model_rpm={"mine": 1, "theirs": 2})
    secret = key(gw, "both", "mine", "theirs")
    first, second = chat(gw, secret), chat(gw, secret)
    # `mine` (1 a minute) failed both times: refunded, so not what limits the second request
    assert (first.status_code, second.status_code) == (200, 200), second.text
    third = chat(gw, secret)  # `theirs` answered twice: its own limit is spent
    assert third.status_code == 503, third.text
    message = third.json()["error"]["message"]
    assert "model 'theirs' is over its limit of 2 requests per minute" in message
    assert len(cloud.requests) == 2
