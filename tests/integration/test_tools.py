"""Tools on local models (issue 14). SmolLM2's chat template does not render `tools`, so the
engine would drop them silently: a forced tool call (OpenAI `tool_choice` "required" or a
named function, Anthropic's "any" or "tool") is a clear 400, `auto` still answers, and
Ollama's /api/show does not advertise `tools` for it. Real model, real `openai`/`anthropic`."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.integration.conftest import MODEL, Gateway

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
