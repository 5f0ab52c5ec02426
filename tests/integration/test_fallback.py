"""Routing with fallback: when the primary deployment fails (connection refused, a 5xx, a
timeout) the answer comes from the fallback, the primary cools down and is tried again after.
The upstreams are `fake_upstream.FakeOpenAI` (OpenAI's chat-completions wire format) and a
closed loopback port."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.fake_upstream import FakeOpenAI, Reply, chunk, fake_openai

pytestmark = pytest.mark.integration


def answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "x",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class Primary:
    """A scripted primary: 'ok', 'error' (500), 'parse' (llama.cpp's 500 for a request its
    parser refused), 'slow' (answers after 3 s), or 'drop' (breaks its stream after the first
    chunk)."""

    def __init__(self) -> None:
        self.mode = "error"

    def __call__(self, request: dict[str, Any]) -> Reply:
        if self.mode == "slow":
            time.sleep(3)
        if self.mode == "error":
            return Reply(status=500, body={"error": {"message": "CUDA out of memory", "code": 500}})
        if self.mode == "parse":  # llama.cpp's answer to a request its parser refused
            msg = "Failed to parse tools: Expected 'tools' to be an array, got 5"
            return Reply(status=500, body={"error": {"message": msg, "code": 500}})
        if self.mode == "drop":
            return Reply(chunks=[chunk({"role": "assistant", "content": "par"})], drop=True)
        return Reply(body=answer("from primary"))


@pytest.fixture
def upstreams() -> Iterator[tuple[Primary, FakeOpenAI, FakeOpenAI]]:
    primary = Primary()
    with fake_openai(primary) as p, fake_openai(lambda r: Reply(body=answer("from backup"))) as b:
        yield primary, p, b


HI = {"role": "user", "content": "hi"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when we return: connections are refused


def ask(gw: Any) -> str:
    chat = gw.client.chat.completions.create(
        model="main", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.model == "main"  # the caller sees the name it asked for
    return str(chat.choices[0].message.content)


def test_fallback_on_5xx_then_primary_again_after_cooldown(
    gateway_factory: GatewayFactory, upstreams: tuple[Primary, FakeOpenAI, FakeOpenAI]
) -> None:
    primary, p, b = upstreams
    gw = gateway_factory(
        demo_model=False,
        router={"cooldown_s": 1},
        models=[
            {"name": "main", "url": p.url, "fallbacks": ["backup"]},
            {"name": "backup", "url": b.url},
        ],
    )
    assert ask(gw) == "from backup"
    backends = {d["model"]: d for d in gw.http.get("/backends").json()["data"]}
    assert (
        backends["main"]["healthy"] is False and "out of memory" in backends["main"]["last_error"]
    )
    assert backends["main"]["fallbacks"] == ["backup"] and backends["backup"]["healthy"] is True
    tried = len(p.requests)
    assert ask(gw) == "from backup" and len(p.requests) == tried  # cooling: primary not tried
    primary.mode = "ok"
    time.sleep(1.1)
    assert ask(gw) == "from primary"  # after the cooldown the primary is tried again
    assert {d["model"]: d for d in gw.http.get("/backends").json()["data"]}["main"]["healthy"]


def test_a_conversation_stays_where_it_was_answered(
    gateway_factory: GatewayFactory, upstreams: tuple[Primary, FakeOpenAI, FakeOpenAI]
) -> None:
    """Session stickiness: ann's conversation, moved to the backup while the primary failed,
    stays there after the primary is back (its prompt cache is on the backup); a new
    conversation goes to the primary. Anthropic's `metadata.user_id` and a conversation's
    first turns name a session too."""
    primary, _, _ = upstreams
    gw = gateway_factory(
        demo_model=False,
        router={"cooldown_s": 1},
        models=[
            {"name": "main", "url": upstreams[1].url, "fallbacks": ["backup"]},
            {"name": "backup", "url": upstreams[2].url},
        ],
    )

    def text(user: str | None = None, *turns: str) -> str:
        extra = {"user": user} if user else {}
        turns = turns or ("hi",)
        roles = ["user", "assistant"] * len(turns)
        messages: Any = [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]
        chat = gw.client.chat.completions.create(model="main", messages=messages, **extra)
        return str(chat.choices[0].message.content)

    assert text("ann") == "from backup"  # the primary fails: ann is answered by the backup
    assert text(None, "a long task") == "from backup"  # so is a conversation without a user
    primary.mode = "ok"
    time.sleep(1.1)  # the primary's cooldown passes
    assert text("bob") == "from primary"
    assert text("ann") == "from backup"  # sticky
    assert text(None, "a long task", "ok", "go on") == "from backup"  # its first turn names it
    assert text(None, "a long task") == "from primary"  # the same first turn again: not steered
    claude = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    answer = claude.messages.create(
        model="main",
        max_tokens=5,
        messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "ann"},
    )
    assert answer.content[0].text == "from backup"  # type: ignore[union-attr]


def test_fallback_on_connection_refused_and_timeout(
    gateway_factory: GatewayFactory, upstreams: tuple[Primary, FakeOpenAI, FakeOpenAI]
) -> None:
    primary, p, b = upstreams
    primary.mode = "slow"
    gw = gateway_factory(
        demo_model=False,
        server={"upstream_timeout_s": 1},
        models=[
            {
                "name": "main",
                "url": f"http://127.0.0.1:{closed_port()}",
                "fallbacks": ["slow", "backup"],  # fallbacks are a list, not followed onward
            },
            {"name": "slow", "url": p.url, "fallbacks": ["backup"]},
            {"name": "backup", "url": b.url},
        ],
    )
    assert ask(gw) == "from backup"
    chat = gw.client.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "from backup"


def test_no_fallback_after_the_first_streamed_byte(
    gateway_factory: GatewayFactory, upstreams: tuple[Primary, FakeOpenAI, FakeOpenAI]
) -> None:
    primary, p, b = upstreams
    primary.mode = "drop"
    gw = gateway_factory(
        demo_model=False,
        models=[
            {"name": "main", "url": p.url, "fallbacks": ["backup"]},
            {"name": "backup", "url": b.url},
        ],
    )
    body = {"model": "main", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert '"content":"par"' in events[0].replace(" ", "")  # the primary's first byte went out
    assert '"error"' in events[-1]  # then its failure, not a second answer from the backup
    assert b.requests == []


def test_an_upstream_refusal_of_the_request_is_no_deployment_failure(
    gateway_factory: GatewayFactory, upstreams: tuple[Primary, FakeOpenAI, FakeOpenAI]
) -> None:
    primary, p, b = upstreams
    primary.mode = "parse"
    gw = gateway_factory(
        demo_model=False,
        models=[
            {"name": "main", "url": p.url, "fallbacks": ["backup"]},
            {"name": "backup", "url": b.url},
        ],
    )
    resp = gw.http.post("/v1/chat/completions", json={"model": "main", "messages": [HI]})
    assert resp.status_code == 400, resp.text
    assert resp.headers["x-mlo-error-source"] == "upstream"
    assert "Failed to parse tools" in resp.json()["error"]["message"]
    assert b.requests == []  # not re-sent to the fallback
    main = {d["model"]: d for d in gw.http.get("/backends").json()["data"]}["main"]
    assert main["healthy"] is True and main["failures"] == 0
