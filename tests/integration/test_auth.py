"""API keys at the gateway, through the official `openai` and `anthropic` clients and plain HTTP:
refusals in each dialect's shape, scopes, admin endpoints, expiry, and revocation seen at once by
a second gateway sharing the same database. The model behind the gateway is
`fake_upstream.FakeOpenAI` (OpenAI's chat-completions wire format)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ml_offload.security.keys import KeyStore
from ml_offload.storage.db import Database
from ml_offload.storage.keys_repo import KeyRepository
from tests.integration.conftest import Gateway, GatewayFactory
from tests.integration.fake_upstream import FakeOpenAI, Reply, chunk, fake_openai

pytestmark = pytest.mark.integration

ADMIN = "admin-" + "x" * 24
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def answer(request: dict[str, Any]) -> Reply:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if request.get("stream"):
        return Reply(
            chunks=[
                chunk({"role": "assistant", "content": "hello"}),
                chunk({}, "stop"),
                {**chunk({}), "choices": [], "usage": usage},
            ]
        )
    message = {"role": "assistant", "content": "hello"}
    return Reply(
        body={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(answer) as f:
        yield f


class Keys:
    """Keys in the database the gateways share, made as `mlo keys` makes them."""

    def __init__(self, tmp: Path) -> None:
        self.url = f"sqlite+aiosqlite:///{tmp / 'shared' / 'registry.db'}"
        self.config = tmp / "keys.toml"
        self.config.write_text(f'[storage]\ndatabase_url = "{self.url}"\ndata_dir = "{tmp}"\n')

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "ml_offload.cli.main",
                "keys",
                *args,
                "--config",
                str(self.config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def create(self, *args: str) -> str:
        done = self.cli("create", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def create_direct(self, name: str, **kw: Any) -> str:
        async def run() -> str:
            db = await Database.open(self.url)
            try:
                return (await KeyStore(KeyRepository(db)).create(name, **kw)).secret
            finally:
                await db.close()

        return asyncio.run(run())


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def start(factory: GatewayFactory, fake: FakeOpenAI, keys: Keys, **security: Any) -> Gateway:
    return factory(
        demo_model=False,
        storage={"database_url": keys.url},
        security={"audit": {"enabled": False}, **security},
        models=[
            {"name": "m", "url": fake.url, "parallel": 32},
            {"name": "other", "url": fake.url},
        ],
    )


def test_refusals_in_each_dialect_and_both_key_headers(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    key = keys.create("--name", "ci")
    gw = start(gateway_factory, fake, keys)
    assert gw.http.get("/health").status_code == 200  # public
    openai_err = gw.http.post("/v1/chat/completions", json=CHAT)
    assert openai_err.status_code == 401
    assert openai_err.json()["error"]["type"] == "authentication_error"
    assert "missing API key" in openai_err.json()["error"]["message"]
    claude_err = gw.http.post("/v1/messages", json={**CHAT, "max_tokens": 5})
    assert claude_err.status_code == 401
    assert claude_err.json()["type"] == "error"
    assert claude_err.json()["error"]["type"] == "authentication_error"
    ollama_err = gw.http.post("/api/chat", json={**CHAT, "stream": False})
    assert ollama_err.status_code == 401 and isinstance(ollama_err.json()["error"], str)
    wrong = gw.http.post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer " + key[:-3] + "abc"}
    )
    assert wrong.status_code == 401 and "invalid API key" in wrong.json()["error"]["message"]

    with pytest.raises(openai.AuthenticationError):
        gw.client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    gpt = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
    assert gpt.chat.completions.create(**CHAT).choices[0].message.content == "hello"  # type: ignore[call-overload]
    claude = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)  # x-api-key
    message = claude.messages.create(
        model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "hello"
    ollama = gw.http.post(
        "/api/chat", json={**CHAT, "stream": False}, headers={"authorization": f"Bearer {key}"}
    )
    assert ollama.status_code == 200 and ollama.json()["message"]["content"] == "hello"


def test_websocket_handshake_needs_a_key(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    key = keys.create("--name", "ws")
    gw = start(gateway_factory, fake, keys)
    ws_url = gw.url.replace("http://", "ws://") + "/ws/inference"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, open_timeout=10)
    assert refused.value.response.status_code == 401
    with connect(ws_url, open_timeout=10, additional_headers={"x-api-key": key}) as ws:
        ws.send('{"id": 1, "model": "m", "prompt": "hi"}')
        replies = [json.loads(ws.recv(timeout=30))]
        while not replies[-1].get("done"):
            replies.append(json.loads(ws.recv(timeout=30)))
        assert replies[0]["id"] == 1 and "error" not in replies[-1]
        assert keys.cli("revoke", "ws").returncode == 0
        ws.send('{"id": 2, "model": "m", "prompt": "hi"}')  # the open connection is refused too
        refused_message = json.loads(ws.recv(timeout=30))
        assert refused_message["id"] == 2 and refused_message["error"]["status"] == 401
        assert "revoked" in refused_message["error"]["message"]


def test_scopes_and_admin_endpoints(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    scoped = keys.create("--name", "scoped", "--models", "m")
    gw = start(gateway_factory, fake, keys, admin_key=ADMIN)
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=scoped, max_retries=0)
    assert client.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
    with pytest.raises(openai.PermissionDeniedError, match="may not use model 'other'"):
        client.chat.completions.create(**{**CHAT, "model": "other"})  # type: ignore[call-overload]
    as_scoped = {"authorization": f"Bearer {scoped}"}
    for method, path in (("POST", "/models/m/unload"), ("GET", "/admin/keys")):
        refused = gw.http.request(method, path, headers=as_scoped)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["type"] == "permission_error"
    assert gw.http.get("/models/m", headers=as_scoped).status_code == 200  # reads are fine
    # Ollama's idiom: an empty prompt loads (within the scope), keep_alive 0 unloads (admin).
    load = gw.http.post("/api/generate", json={"model": "m"}, headers=as_scoped)
    assert load.status_code == 200 and load.json()["done_reason"] == "load", load.text
    for body in ({"model": "other"}, {"model": "m", "keep_alive": 0}):
        refused = gw.http.post("/api/generate", json=body, headers=as_scoped)
        assert refused.status_code == 403 and isinstance(refused.json()["error"], str)

    gw.use_key(ADMIN)
    made = gw.http.post("/admin/keys", json={"name": "from-api", "rpm": 10})
    assert made.status_code == 201, made.text
    new = made.json()["key"]
    listed = gw.http.get("/admin/keys").json()["data"]
    assert {k["name"] for k in listed} == {"scoped", "from-api"}
    assert all("key" not in k and "secret_sha256" not in k for k in listed)
    assert gw.http.post("/models/m/unload").status_code == 200  # the admin key may
    as_new = {"x-api-key": new}  # on its own (gw.http sends the admin key)
    chat_url = f"{gw.url}/v1/chat/completions"
    assert httpx.post(chat_url, json=CHAT, headers=as_new).status_code == 200
    assert gw.http.delete(f"/admin/keys/{made.json()['id']}").json()["revoked_at"]
    after = httpx.post(chat_url, json=CHAT, headers=as_new)
    assert after.status_code == 401 and "revoked" in after.json()["error"]["message"]
    bad = gw.http.post("/admin/keys", json={"name": "x", "expires": "someday"})
    assert bad.status_code == 400 and "30d" in bad.json()["error"]["message"]


def test_expired_key(gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys) -> None:
    old = keys.create_direct("old", expires_at=time.time() - 1)
    live = keys.create("--name", "live", "--expires", "1h")
    gw = start(gateway_factory, fake, keys)
    expired = gw.http.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": old})
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    ok = gw.http.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": live})
    assert ok.status_code == 200


def test_revocation_is_seen_at_once_by_another_gateway(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    key = keys.create("--name", "shared")
    one = start(gateway_factory, fake, keys, admin_key=ADMIN)
    two = start(gateway_factory, fake, keys)
    headers = {"authorization": f"Bearer {key}"}
    for gw in (one, two):
        assert gw.http.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    revoked = one.http.delete("/admin/keys/shared", headers={"authorization": f"Bearer {ADMIN}"})
    assert revoked.status_code == 200, revoked.text
    refused = two.http.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_cli_revoke_while_the_gateway_runs(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    key = keys.create("--name", "cli")
    gw = start(gateway_factory, fake, keys)
    headers = {"authorization": f"Bearer {key}"}
    assert gw.http.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    listed = keys.cli("ls")
    assert listed.returncode == 0 and "cli" in listed.stdout and key not in listed.stdout
    assert keys.cli("revoke", "cli").returncode == 0
    assert gw.http.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 401
    missing = keys.cli("revoke", "nobody")
    assert missing.returncode != 0 and "no key" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_a_key_created_while_running_turns_auth_on(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    gw = start(gateway_factory, fake, keys)
    assert gw.http.post("/v1/chat/completions", json=CHAT).status_code == 200  # no keys: open
    key = keys.create("--name", "first")
    ok = gw.http.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": key})
    assert ok.status_code == 200  # a request with a key makes the gateway look again at once
    assert gw.http.post("/v1/chat/completions", json=CHAT).status_code == 401


def test_cli_sends_the_key_from_the_environment(
    gateway_factory: GatewayFactory, fake: FakeOpenAI, keys: Keys
) -> None:
    gw = start(gateway_factory, fake, keys, admin_key=ADMIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLO_")}

    def ps(**extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ml_offload.cli.main", "ps", "--url", gw.url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**env, **extra})

    refused = ps()
    assert refused.returncode == 1 and "MLO_API_KEY" in refused.stderr, refused.stderr
    lines = refused.stderr.strip().splitlines()
    errors = [line for line in lines if not line.startswith(f"gateway {gw.url}")]  # which one
    assert len(errors) == 1, refused.stderr  # one line, no traceback
    listed = ps(MLO_API_KEY=ADMIN)
    assert listed.returncode == 0 and "other" in listed.stdout, listed.stderr
