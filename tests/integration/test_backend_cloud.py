"""OpenAI and DeepSeek as providers (OpenAI's wire format, `Authorization: Bearer` keys) through
the official `openai` client: DeepSeek's `reasoning_content` reaches the caller intact, plain and
streamed; keys go upstream and nowhere else; `url` defaults per provider. The providers are
`fake_vllm.FakeVllm` speaking OpenAI's format with DeepSeek's reasoning field (see its docstring
for the documents followed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.integration.conftest import Gateway, GatewayFactory
from tests.integration.fake_vllm import FakeVllm

pytestmark = pytest.mark.integration
DEEPSEEK_KEY = "sk-deepseek-secret-4242"
OPENAI_KEY = "sk-openai-secret-9999"
HI: Any = [{"role": "user", "content": "hi"}]


@pytest.fixture
def providers() -> Iterator[tuple[FakeVllm, FakeVllm]]:
    with (
        FakeVllm(
            "The answer.",
            model="deepseek-reasoner",
            reasoning="Let me think it over.",
            api_key=DEEPSEEK_KEY,
        ) as deepseek,
        FakeVllm("From OpenAI.", model="gpt-4o-mini", api_key=OPENAI_KEY) as cloud,
    ):
        yield deepseek, cloud


@pytest.fixture
def gw(
    gateway_factory: GatewayFactory,
    providers: tuple[FakeVllm, FakeVllm],
    monkeypatch: pytest.MonkeyPatch,
) -> Gateway:
    deepseek, cloud = providers
    monkeypatch.setenv("TEST_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-default-env-key-7777")
    return gateway_factory(
        demo_model=False,
        models=[
            {
                "name": "ds",
                "url": deepseek.url,
                "backend": "deepseek",
                "remote_model": "deepseek-reasoner",
                "api_key": DEEPSEEK_KEY,
            },
            {
                "name": "gpt",
                "url": cloud.url,
                "remote_model": "gpt-4o-mini",
                "api_key_env": "TEST_OPENAI_KEY",
            },
            {"name": "ds-default", "backend": "deepseek"},
            {"name": "claude-default", "backend": "anthropic"},
            {"name": "gpt-default", "backend": "openai", "api_key_env": "TEST_OPENAI_KEY"},
        ],
    )


def test_deepseek_reasoning_content_reaches_the_client(
    gw: Gateway, providers: tuple[FakeVllm, FakeVllm]
) -> None:
    deepseek, _ = providers
    chat = gw.client.chat.completions.create(model="ds", messages=HI)
    message = chat.choices[0].message
    assert message.content == "The answer."
    assert getattr(message, "reasoning_content", None) == "Let me think it over."
    stream = gw.client.chat.completions.create(model="ds", messages=HI, stream=True)
    reasoning, content = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
    assert (reasoning, content) == ("Let me think it over.", "The answer.")
    assert {s.headers["Authorization"] for s in deepseek.seen} == {f"Bearer {DEEPSEEK_KEY}"}
    assert {s.body["model"] for s in deepseek.seen} == {"deepseek-reasoner"}


def test_openai_key_from_the_environment(gw: Gateway, providers: tuple[FakeVllm, FakeVllm]) -> None:
    _, cloud = providers
    chat = gw.client.chat.completions.create(model="gpt", messages=HI)
    assert chat.model == "gpt" and chat.choices[0].message.content == "From OpenAI."
    assert cloud.seen[0].headers["Authorization"] == f"Bearer {OPENAI_KEY}"


def test_a_refused_key_is_the_callers_error_without_the_key(
    gw: Gateway, providers: tuple[FakeVllm, FakeVllm]
) -> None:
    deepseek, _ = providers
    deepseek.api_key = "sk-another-key"
    with pytest.raises(openai.AuthenticationError) as caught:
        gw.client.chat.completions.create(model="ds", messages=HI)
    assert "Authentication Fails" in caught.value.message
    assert DEEPSEEK_KEY not in str(caught.value.body)


def test_keys_are_never_shown_and_urls_default(gw: Gateway) -> None:
    gw.client.chat.completions.create(model="ds", messages=HI)
    backends = gw.http.get("/backends")
    targets = {d["model"]: d["target"] for d in backends.json()["data"]}
    assert targets["ds-default"] == "https://api.deepseek.com"
    assert targets["claude-default"] == "https://api.anthropic.com"
    assert targets["gpt-default"] == "https://api.openai.com"
    shown = [
        backends.text,
        gw.http.get("/models").text,
        gw.http.get("/v1/models").text,
        gw.http.get("/api/tags").text,
        gw.log.read_text(),
    ]
    for key in (DEEPSEEK_KEY, OPENAI_KEY, "sk-default-env-key-7777"):
        assert not [text for text in shown if key in text]
