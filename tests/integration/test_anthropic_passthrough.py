"""Anthropic's Messages API passed through to a deployment that speaks it (issue 15).

Through the official `anthropic` client to the native-Messages fake (`fake_anthropic_api.py`):
the blocks that translation would lose (thinking and redacted_thinking with signatures,
tool_use/tool_result, cache_control with ttl, images, documents) reach it unchanged, its answer
and event stream come back byte for byte, and its usage (prompt-cache counts included) is
charged and audited. count_tokens is passed through too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.integration.conftest import Gateway, GatewayFactory
from tests.integration.fake_anthropic_api import NATIVE_CONTENT, FakeAnthropic
from tests.integration.fake_vllm import FakeVllm

pytestmark = pytest.mark.integration
KEY = "sk-ant-test-0123456789abcdef"
PDF = "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg=="
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
    "rkJggg=="
)
CACHED = {"type": "ephemeral", "ttl": "1h"}
SYSTEM: Any = [{"type": "text", "text": "You are a coding agent.", "cache_control": CACHED}]
TOOLS: Any = [
    {"name": "get_weather", "input_schema": {"type": "object"}, "cache_control": CACHED},
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},  # Anthropic runs it
]
MESSAGES: Any = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": NATIVE_CONTENT},
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18°C, sunny"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                "cache_control": CACHED,
            },
            {"type": "text", "text": "And tomorrow? 🚀", "cache_control": {"type": "ephemeral"}},
        ],
    },
]
THINKING: Any = {"type": "enabled", "budget_tokens": 1024}
BETA = "extended-cache-ttl-2025-04-11"


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(KEY) as fake:
        fake.mode = "native"
        yield fake


@pytest.fixture
def gw(
    gateway_factory: GatewayFactory,
    claude: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[Gateway]:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", KEY)
    with FakeVllm("from backup", model="backup") as backup:
        yield gateway_factory(
            demo_model=False,
            security={"audit": {"path": tmp_path / "audit.jsonl", "flush_interval_s": 0.05}},
            models=[
                {
                    "name": "claude",
                    "url": claude.url,
                    "backend": "anthropic",
                    "remote_model": "claude-sonnet-4-5",
                    "api_key_env": "TEST_ANTHROPIC_KEY",
                    "aliases": ["claude-*"],
                    "fallbacks": ["backup"],  # OpenAI-shaped: never sent a Messages body
                },
                {"name": "backup", "url": backup.url},
            ],
        )


def _client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url, api_key="unused", max_retries=0, default_headers={"anthropic-beta": BETA}
    )


def _create(gw: Gateway, **kw: Any) -> Any:
    return _client(gw).messages.create(
        model="claude-opus-4-1",
        max_tokens=2048,
        system=SYSTEM,
        tools=TOOLS,
        thinking=THINKING,
        messages=MESSAGES,
        **kw,
    )


def _assert_received_unchanged(claude: FakeAnthropic) -> None:
    seen = claude.seen[-1]
    body = seen.body
    assert body["model"] == "claude-sonnet-4-5"  # the name upstream, the rest as sent
    for key, sent in (("system", SYSTEM), ("tools", TOOLS), ("thinking", THINKING)):
        assert json.dumps(body[key]) == json.dumps(sent), key
    assert json.dumps(body["messages"]) == json.dumps(MESSAGES)
    assert seen.headers["anthropic-beta"] == BETA and seen.headers["x-api-key"] == KEY


def test_blocks_reach_the_provider_and_come_back_unchanged(
    gw: Gateway, claude: FakeAnthropic
) -> None:
    message = _create(gw)
    _assert_received_unchanged(claude)
    assert [b.model_dump(exclude_none=True) for b in message.content] == NATIVE_CONTENT
    assert message.usage.cache_creation_input_tokens == 100
    assert message.usage.cache_read_input_tokens == 200


def test_the_event_stream_comes_back_byte_for_byte(gw: Gateway, claude: FakeAnthropic) -> None:
    body = {
        "model": "claude",
        "max_tokens": 2048,
        "stream": True,
        "thinking": THINKING,
        "messages": MESSAGES,
    }
    with httpx.stream("POST", f"{gw.url}/v1/messages", json=body, timeout=30) as resp:
        received = b"".join(resp.iter_raw())
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert received == b"".join(claude.frames)
    with _client(gw).messages.stream(
        model="claude", max_tokens=2048, thinking=THINKING, messages=MESSAGES
    ) as stream:
        final = stream.get_final_message()
    assert [b.model_dump(exclude_none=True) for b in final.content] == NATIVE_CONTENT


def test_usage_with_cache_counts_is_audited(gw: Gateway, claude: FakeAnthropic) -> None:
    _create(gw)
    with _client(gw).messages.stream(
        model="claude", max_tokens=64, messages=MESSAGES[:1]
    ) as stream:
        stream.get_final_message()
    events = _audit_events(gw, 2)
    for event in events:
        assert (event["prompt_tokens"], event["completion_tokens"]) == (312, 15)
        assert (event["cache_read_tokens"], event["cache_write_tokens"]) == (200, 100)
        assert event["backend"] == "claude"


def _audit_events(gw: Gateway, count: int) -> list[dict[str, Any]]:
    path = gw.log.parent / "audit.jsonl"
    path = path if path.exists() else next(gw.log.parent.parent.glob("audit.jsonl"))
    deadline = time.monotonic() + 10
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        events = [r["event"] for r in records if r["event"].get("path") == "/v1/messages"]
        if len(events) >= count:
            break
        time.sleep(0.05)
    assert len(events) == count
    return events


def test_count_tokens_is_passed_through(gw: Gateway, claude: FakeAnthropic) -> None:
    counted = _client(gw).messages.count_tokens(model="claude", system=SYSTEM, messages=MESSAGES)
    seen = claude.seen[-1]
    assert seen.path == "/v1/messages/count_tokens" and seen.body["model"] == "claude-sonnet-4-5"
    assert json.dumps(seen.body["messages"]) == json.dumps(MESSAGES)
    assert counted.input_tokens == 7 + len(json.dumps(seen.body["messages"]))


def test_provider_errors_reach_the_client_in_anthropic_shape(
    gw: Gateway, claude: FakeAnthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="roles must alternate"):  # its 400
        _client(gw).messages.create(
            model="claude", max_tokens=8, messages=[{"role": "assistant", "content": "x"}]
        )
    claude.mode = "overloaded"  # 529: a deployment failure; the OpenAI-shaped fallback cannot
    with pytest.raises(anthropic.APIStatusError) as caught:  # take a Messages body
        _create(gw)
    assert caught.value.status_code == 502 and "Overloaded" in caught.value.message
    assert not [s for s in claude.seen if s.path != "/v1/messages"]
