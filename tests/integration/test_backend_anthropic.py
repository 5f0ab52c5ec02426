"""Anthropic as a provider behind the gateway, through the official `openai` client (the request
translated to /v1/messages, its JSON and SSE events back to OpenAI's shapes) and the official
`anthropic` client (both translations in a row). The provider is
`fake_anthropic_api.FakeAnthropic` (documents named there)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.integration.conftest import Gateway, GatewayFactory
from tests.integration.fake_anthropic_api import TOOL_INPUT, FakeAnthropic
from tests.integration.fake_vllm import FakeVllm

pytestmark = pytest.mark.integration
KEY = "sk-ant-test-0123456789abcdef"
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(KEY) as fake:
        yield fake


@pytest.fixture
def gw(
    gateway_factory: GatewayFactory, claude: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", KEY)
    with FakeVllm("from backup", model="backup") as backup:
        yield gateway_factory(
            demo_model=False,
            models=[
                {
                    "name": "claude",
                    "url": claude.url,
                    "backend": "anthropic",
                    "remote_model": "claude-sonnet-4-5",
                    "api_key_env": "TEST_ANTHROPIC_KEY",
                },
                {
                    "name": "claude-ha",
                    "url": claude.url,
                    "backend": "anthropic",
                    "api_key_env": "TEST_ANTHROPIC_KEY",
                    "fallbacks": ["backup"],
                },
                {"name": "backup", "url": backup.url},
            ],
        )


def test_chat_plain_and_streamed(gw: Gateway, claude: FakeAnthropic) -> None:
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    chat = gw.client.chat.completions.create(model="claude", messages=messages, stop=["END"])
    assert chat.model == "claude" and chat.choices[0].message.content == "Hello from Claude"
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None and (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (
        12,
        5,
    )
    seen = claude.seen[0]
    assert seen.headers["x-api-key"] == KEY and seen.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in seen.headers
    assert seen.body == {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 4096,  # required by Anthropic, absent from the OpenAI request
        "stop_sequences": ["END"],
    }
    stream = gw.client.chat.completions.create(
        model="claude", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from Claude"
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 15


def test_tool_calls_split_over_many_deltas(gw: Gateway, claude: FakeAnthropic) -> None:
    claude.mode = "tool"
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    stream = gw.client.chat.completions.create(
        model="claude", messages=messages, tools=TOOLS, tool_choice="required", stream=True
    )
    text, calls, finish = "", {}, None
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
    assert text == "Let me check." and finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["id"] == "toolu_01A"
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == TOOL_INPUT
    sent = claude.seen[0].body
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]

    chat = gw.client.chat.completions.create(model="claude", messages=messages, tools=TOOLS)
    call = (chat.choices[0].message.tool_calls or [])[0]
    assert chat.choices[0].finish_reason == "tool_calls" and call.id == "toolu_01A"
    assert json.loads(call.function.arguments) == TOOL_INPUT  # type: ignore[union-attr]

    follow_up: Any = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "18C, sunny"},
    ]
    claude.mode = "text"
    gw.client.chat.completions.create(model="claude", messages=follow_up, tools=TOOLS)
    turns = claude.seen[-1].body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": TOOL_INPUT}
    ]
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18C, sunny"}
    ]


def test_upstream_errors(gw: Gateway, claude: FakeAnthropic) -> None:
    claude.mode = "overloaded"
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.APIStatusError) as caught:
        gw.client.chat.completions.create(model="claude", messages=messages)
    assert caught.value.status_code == 502 and "Overloaded" in caught.value.message
    chat = gw.client.chat.completions.create(model="claude-ha", messages=messages)
    assert chat.choices[0].message.content == "from backup"  # 529 is the deployment's failure

    claude.mode = "stream_error"
    body = {"model": "claude", "messages": messages, "stream": True}
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert '"role":"assistant"' in events[0].replace(" ", "")
    assert "overloaded_error" in events[-1] and '"error"' in events[-1]


def test_through_the_anthropic_client(gw: Gateway, claude: FakeAnthropic) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    message = client.messages.create(
        model="claude", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "Hello from Claude"
    claude.mode = "tool"
    tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    with client.messages.stream(
        model="claude",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[tool],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and uses[0].input == TOOL_INPUT


def test_key_is_sent_but_never_shown(gw: Gateway, claude: FakeAnthropic) -> None:
    gw.client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
    assert claude.seen[0].headers["x-api-key"] == KEY
    shown = [
        gw.http.get("/backends").text,
        gw.http.get("/models").text,
        gw.http.get("/models/claude").text,
        gw.http.get("/v1/models").text,
        gw.log.read_text(),
    ]
    assert not [text for text in shown if KEY in text]
