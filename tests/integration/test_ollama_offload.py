"""Idle offload for a model held by an external Ollama: the gateway loads it there on demand,
and after its idle TTL asks Ollama to unload it (`keep_alive: 0`) so its GPU memory is freed.
Ollama cannot run here: `fake_ollama.FakeOllama` speaks its documented wire format."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.fake_ollama import FakeOllama

pytestmark = pytest.mark.integration
REMOTE = "llama3.2:latest"


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    server = FakeOllama().start()
    yield server
    server.stop()


def test_idle_ollama_model_is_unloaded_after_its_ttl(
    gateway_factory: GatewayFactory, ollama: FakeOllama
) -> None:
    gw = gateway_factory(
        demo_model=False,
        models=[
            {
                "name": "llama",
                "url": ollama.url,
                "backend": "ollama",
                "remote_model": REMOTE,
                "ttl_s": 1,
            }
        ],
    )
    chat = gw.client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.model == "llama" and chat.choices[0].message.content == "Hello from Ollama"
    assert REMOTE in ollama.loaded and gw.model("llama")["state"] == "ready"
    deadline = time.monotonic() + 5
    while REMOTE in ollama.loaded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert REMOTE not in ollama.loaded, "the idle model was not unloaded from Ollama"
    assert {"model": REMOTE, "prompt": "", "stream": False, "keep_alive": 0} in ollama.calls
    assert gw.model("llama")["state"] == "stopped"


def test_unload_all_reaches_ollama_and_errors_are_clear(
    gateway_factory: GatewayFactory, ollama: FakeOllama
) -> None:
    gw = gateway_factory(
        demo_model=False,
        models=[
            {
                "name": "llama",
                "url": ollama.url,
                "backend": "ollama",
                "remote_model": REMOTE,
                "ttl_s": 0,
            },
            {"name": "missing", "url": ollama.url, "backend": "ollama", "remote_model": "nope:1b"},
        ],
    )
    assert gw.http.post("/models/llama/load").json()["state"] == "ready"
    assert REMOTE in ollama.loaded
    assert gw.http.post("/models/unload_all").json()["unloaded"] == ["llama"]
    assert REMOTE not in ollama.loaded
    resp = gw.http.post(
        "/v1/chat/completions",
        json={"model": "missing", "messages": [{"role": "user", "content": "x"}]},
    )
    assert resp.status_code == 502 and "not found" in resp.json()["error"]["message"]


def test_backends_show_what_ollama_holds(
    gateway_factory: GatewayFactory, ollama: FakeOllama
) -> None:
    """GET /backends reads Ollama's /api/tags (is the model pulled) and /api/ps (is it loaded,
    in how much VRAM)."""
    gw = gateway_factory(
        demo_model=False,
        models=[
            {"name": "llama", "url": ollama.url, "backend": "ollama", "remote_model": REMOTE},
            {"name": "gone", "url": ollama.url, "backend": "ollama", "remote_model": "nope:1b"},
        ],
    )

    def backends() -> dict[str, Any]:
        return {b["model"]: b for b in gw.http.get("/backends").json()["data"]}

    def wait(check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen = backends()
            if check(seen):
                return seen
            time.sleep(0.1)
        raise AssertionError(f"/backends never showed it: {seen}")

    seen = wait(lambda s: "probe" in s["llama"] and "probe" in s["gone"])
    assert seen["llama"]["probe"]["loaded"] is False and seen["llama"]["healthy"]
    assert seen["gone"]["healthy"] is False and "POST /api/pull" in seen["gone"]["probe"]["error"]
    gw.client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}])
    seen = wait(lambda s: s["llama"]["probe"]["loaded"])
    assert seen["llama"]["probe"]["vram_bytes"] == 2_000_000_000


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def llama(ollama: FakeOllama, **extra: Any) -> dict[str, Any]:
    return {"name": "llama", "url": ollama.url, "backend": "ollama", "remote_model": REMOTE} | extra


def hi(gw: Any, model: str = "llama") -> str:
    chat = gw.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    return str(chat.choices[0].message.content)


def test_a_long_ttl_outlives_ollamas_own_keep_alive(gateway_factory: GatewayFactory) -> None:
    """Each /v1 request sets Ollama's default keep-alive (1 s here, 5 min by default); the
    gateway sends its own after each one, so the model stays for the gateway's TTL."""
    server = FakeOllama(default_keep_alive_s=1).start()
    try:
        gw = gateway_factory(demo_model=False, models=[llama(server, ttl_s=600)])
        for _ in range(3):
            assert hi(gw) == "Hello from Ollama"
        chats = [i for i, c in enumerate(server.calls) if c.get("path") == "/v1/chat/completions"]
        wait_until(
            lambda: any(c.get("keep_alive") == -1 for c in server.calls[chats[-1] + 1 :]),
            "the gateway renewed its keep-alive after the last request",
        )
        time.sleep(1.5)  # past Ollama's default keep-alive
        server.expire()
        assert REMOTE in server.loaded and server.expires[REMOTE] is None
        assert gw.model("llama")["state"] == "ready"
    finally:
        server.stop()


def test_a_model_ollama_dropped_is_not_shown_ready(
    gateway_factory: GatewayFactory, ollama: FakeOllama
) -> None:
    """Ollama dropped the model (restart, its own keep-alive): /api/ps is the truth, the
    gateway shows it stopped, and the next request loads it again."""
    gw = gateway_factory(demo_model=False, models=[llama(ollama, ttl_s=600)])
    assert gw.http.post("/models/llama/load").json()["state"] == "ready"
    ollama.loaded.pop(REMOTE)
    ollama.expires.pop(REMOTE)
    wait_until(lambda: gw.model("llama")["state"] == "stopped", "the probe saw it dropped")
    assert hi(gw) == "Hello from Ollama"
    assert gw.model("llama")["state"] == "ready" and REMOTE in ollama.loaded


def test_ollama_models_count_toward_the_loaded_cap(
    gateway_factory: GatewayFactory, ollama: FakeOllama
) -> None:
    """With max_loaded_models = 1, the real engine and the Ollama model take turns."""
    gw = gateway_factory(scheduler={"max_loaded_models": 1}, models=[llama(ollama, ttl_s=600)])
    hi(gw, "smollm2-135m")
    pid = gw.model("smollm2-135m")["pid"]
    assert pid
    hi(gw)
    assert gw.model("smollm2-135m")["state"] == "stopped"
    assert REMOTE in ollama.loaded and gw.model("llama")["state"] == "ready"
    hi(gw, "smollm2-135m")
    assert REMOTE not in ollama.loaded and gw.model("llama")["state"] == "stopped"
