"""What coding agents rely on (issue 15): stream shapes, count_tokens, model lists and names.

Stream shapes as each dialect documents them, whatever the engine does.

OpenAI (https://platform.openai.com/docs/api-reference/chat-streaming): `delta.role` on the
first chunk, one `id` for the stream, the usage chunk last with empty `choices`. Anthropic
(https://docs.claude.com/en/api/messages-streaming): `message_start` (with the prompt's
`input_tokens`) … `content_block_*` … `message_delta`, `message_stop`. Checked over several
prompts with the real SmolLM2 engine, including a reply that starts with an emoji (llama.cpp
then sends no role chunk), and with a scripted upstream that splits a character and sends
chunks under changing ids with the usage on every chunk. (An upstream that tells the prompt's
tokens only in its last chunk leaves 0 in `message_start`: waiting would re-buffer the stream.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.integration.conftest import MODEL, Gateway, _start, stop
from tests.integration.fake_upstream import FakeOpenAI, Reply, chunk, fake_openai

pytestmark = pytest.mark.integration

FAKE = "fake-split"
PROMPTS = [
    "Start your reply with the emoji 🚀 and nothing else.",  # SmolLM2 starts with the emoji
    "Say hi",
    "Réponds en français : bonjour ?",
    "日本語で挨拶してください。",
    "List three colours.",
]
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def _split(request: dict[str, Any]) -> Reply:
    """A reply starting with a multi-token character, no role chunk, ids changing mid-stream
    and the usage on every chunk (vLLM's `continuous_usage_stats`), none at the end."""
    if not request.get("stream"):
        message = {"role": "assistant", "content": "🚀 lift-off"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return Reply(body={"id": "a", "object": "chat.completion", "choices": [choice]})
    first = {**USAGE, "completion_tokens": 1, "total_tokens": 10}
    return Reply(
        chunks=[
            {**chunk({"content": "🚀"}), "id": "a", "usage": first},
            {**chunk({"content": " lift-off"}), "id": "b", "usage": first},
            {**chunk({}, "stop"), "id": "c", "usage": USAGE},
        ]
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(_split) as f:
        yield f


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, smollm_path: Path, fake: FakeOpenAI
) -> Iterator[Gateway]:
    models = [
        {"name": FAKE, "url": fake.url, "aliases": ["gpt-*"]},
        {"name": MODEL, "path": smollm_path, "aliases": ["claude-*"]},
    ]
    g = _start(tmp_path_factory.mktemp("agents"), models=models)
    yield g
    stop(g)


def _openai_stream(gw: Gateway, model: str, prompt: str) -> list[Any]:
    stream = gw.client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    return list(stream)


def _assert_openai_shape(chunks: list[Any]) -> str:
    """The documented shape; the reply's text."""
    assert chunks, "no chunks"
    assert chunks[0].choices and chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_openai_streams_conform_with_the_real_engine(gw: Gateway) -> None:
    texts = [_assert_openai_shape(_openai_stream(gw, MODEL, p)) for p in PROMPTS]
    assert texts[0].startswith("🚀"), texts[0]  # the case llama.cpp sends without a role


def test_openai_stream_conforms_over_a_deviating_upstream(gw: Gateway) -> None:
    chunks = _openai_stream(gw, FAKE, "go")
    assert _assert_openai_shape(chunks) == "🚀 lift-off"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 12


def _anthropic_events(gw: Gateway, model: str, prompt: str) -> list[Any]:
    client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    with client.messages.stream(
        model=model, max_tokens=4, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.usage.input_tokens == events[0].message.usage.input_tokens
    return events


def _assert_anthropic_shape(events: list[Any]) -> int:
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    body = [k for k in kinds[1:-2] if k not in ("ping", "text")]  # `text`: the SDK's own event
    assert body[0] == "content_block_start" and body[-1] == "content_block_stop"
    input_tokens: int = events[0].message.usage.input_tokens
    assert input_tokens > 0
    assert events[-2].usage.input_tokens == input_tokens
    return input_tokens


def test_anthropic_streams_carry_the_prompt_tokens_in_message_start(gw: Gateway) -> None:
    for prompt in PROMPTS:
        _assert_anthropic_shape(_anthropic_events(gw, MODEL, prompt))


def test_anthropic_stream_over_a_deviating_upstream(gw: Gateway) -> None:
    assert _assert_anthropic_shape(_anthropic_events(gw, FAKE, "go")) == 9


# -- count_tokens, model lists, model names ------------------------------------------------


def _anthropic(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)


def test_count_tokens_is_what_the_engine_charges(gw: Gateway) -> None:
    """Exact: the count equals the `input_tokens` the same request is then charged."""
    client = _anthropic(gw)
    weather = {"name": "get_weather", "input_schema": {"type": "object"}}
    for kw in (
        {"messages": [{"role": "user", "content": "Say hi"}]},
        {"system": "Be brief.", "messages": [{"role": "user", "content": "日本語 🚀 ok?"}]},
        {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [weather]},
    ):
        counted = client.messages.count_tokens(model=MODEL, **kw).input_tokens  # type: ignore[arg-type]
        used = client.messages.create(model=MODEL, max_tokens=1, **kw).usage.input_tokens  # type: ignore[arg-type]
        assert counted == used > 0


def test_count_tokens_errors_in_anthropic_shape(gw: Gateway) -> None:
    client = _anthropic(gw)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such", messages=[{"role": "user", "content": "x"}])
    # the scripted upstream is no llama.cpp server: its /apply-template answer is an SSE stream
    with pytest.raises(anthropic.APIStatusError, match="/apply-template") as caught:
        client.messages.count_tokens(model=FAKE, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["type"] == "error"  # type: ignore[index]


def test_models_in_anthropic_shape_for_anthropic_clients(gw: Gateway) -> None:
    page = _anthropic(gw).models.list()
    ids = [m.id for m in page.data]
    assert MODEL in ids and FAKE in ids
    assert not [i for i in ids if "*" in i]  # patterns route names, they are not models
    assert _anthropic(gw).models.retrieve(MODEL).type == "model"
    assert gw.client.models.list().data[0].object == "model"  # OpenAI's shape without the header


def test_glob_aliases_route_names_clients_insist_on(gw: Gateway) -> None:
    reply = _anthropic(gw).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=2,
        messages=[{"role": "user", "content": "Say hi"}],
    )
    assert reply.model == "claude-sonnet-4-5" and reply.usage.input_tokens > 0
    chunks = _openai_stream(gw, "gpt-5-codex", "go")
    assert _assert_openai_shape(chunks) == "🚀 lift-off"  # the scripted upstream answered


def test_server_tools_are_dropped_with_a_warning_never_invented(
    gw: Gateway, fake: FakeOpenAI
) -> None:
    tools: Any = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]
    raw = _anthropic(gw).messages.with_raw_response.create(
        model=FAKE, max_tokens=8, tools=tools, messages=[{"role": "user", "content": "news?"}]
    )
    assert "web_search" in raw.headers["x-mlo-warning"]
    assert "tools" not in fake.requests[-1]
    message = raw.parse()
    assert [b.type for b in message.content] == ["text"]  # no server_tool_use made up
