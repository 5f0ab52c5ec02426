"""Tools on local models (issue 14). SmolLM2's chat template does not render `tools`, so the
engine would drop them silently: a forced tool call (OpenAI `tool_choice` "required" or a
named function, Anthropic's "any" or "tool") is a clear 400, `auto` still answers, and
Ollama's /api/show does not advertise `tools` for it. With the shipped `chatml-tools` template
the same file answers a forced call as a parsed tool call. Real model, real `openai`/`anthropic`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.integration.conftest import MODEL, Gateway, _start, stop

pytestmark = pytest.mark.integration
TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_tool_choice_without_template_support_is_400(gateway: Gateway, choice: Any) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[TOOL], tool_choice=choice, max_tokens=8
        )
    assert "tool_choice" in refused.value.message and "template" in refused.value.message


def test_anthropic_forced_tool_is_400(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    tool: Any = {"name": "get_weather", "input_schema": {"type": "object"}}
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(
                model=MODEL,
                max_tokens=8,
                messages=ASK,
                tools=[tool],
                tool_choice=choice,  # type: ignore[arg-type]
            )
        assert "tool_choice" in str(refused.value)


def test_auto_tool_choice_answers_and_show_has_no_tools(gateway: Gateway) -> None:
    done = gateway.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[TOOL], tool_choice="auto", max_tokens=4
    )
    assert done.choices[0].message.content
    show = gateway.http.post("/api/show", json={"model": MODEL}).json()
    assert "completion" in show["capabilities"] and "tools" not in show["capabilities"]


TOOLS_MODEL = "smollm2-tools"


@pytest.fixture(scope="module")
def tools_gateway(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[Gateway]:
    """The demo file served with the shipped `chatml-tools` template (Hermes-style calls)."""
    model = {
        "name": TOOLS_MODEL,
        "path": str(smollm_path),
        "chat_template_file": "chatml-tools",
        "ctx_size": 1024,
        "parallel": 1,
        "embeddings": False,
    }
    gw = _start(tmp_path_factory.mktemp("tools"), models=[model])
    yield gw
    stop(gw)


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_tool_call_comes_back_as_a_tool_call(tools_gateway: Gateway, choice: Any) -> None:
    other: Any = {**TOOL, "function": {**TOOL["function"], "name": "get_time"}}
    done = tools_gateway.client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=ASK,
        tools=[other, TOOL],
        tool_choice=choice,
        max_tokens=100,
        temperature=0,
    )
    choice_0 = done.choices[0]
    assert choice_0.finish_reason == "tool_calls" and choice_0.message.tool_calls
    call: Any = choice_0.message.tool_calls[0]
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    assert call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)


def test_forced_tool_call_streams_as_tool_call_deltas(tools_gateway: Gateway) -> None:
    stream = tools_gateway.client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=ASK,
        tools=[TOOL],
        tool_choice="required",
        max_tokens=100,
        temperature=0,
        stream=True,
    )
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish = None
    for chunk in stream:
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for delta in c.delta.tool_calls or []:
                fn = delta.function
                names[delta.index] = names.get(delta.index, "") + ((fn and fn.name) or "")
                arguments[delta.index] = arguments.get(delta.index, "") + (
                    (fn and fn.arguments) or ""
                )
    assert finish == "tool_calls" and names and set(names.values()) == {"get_weather"}
    assert all(isinstance(json.loads(a), dict) for a in arguments.values())


def test_anthropic_any_returns_a_tool_use_block(tools_gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=tools_gateway.url, api_key="unused", max_retries=0)
    tool: Any = {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    msg = client.messages.create(
        model=TOOLS_MODEL,
        max_tokens=100,
        messages=ASK,
        tools=[tool],
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},  # this client's create() takes no temperature
    )
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use" and uses and uses[0].name == "get_weather"
    assert isinstance(uses[0].input, dict)


def test_show_advertises_tools_for_a_template_with_them(tools_gateway: Gateway) -> None:
    show = tools_gateway.http.post("/api/show", json={"model": TOOLS_MODEL}).json()
    assert "tools" in show["capabilities"]
