"""Anthropic's Messages API through the official `anthropic` client, against the real engine.

Responses, stream events and errors are validated strictly against the `anthropic` package's
own types (no fields Anthropic does not define). Tool calls come from a scripted OpenAI-style
upstream (`fake_upstream.py`) that streams their arguments in many fragments, since the small
real model does not call tools reliably.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import BaseModel, TypeAdapter

from tests.integration.conftest import MODEL, Gateway, _start, stop
from tests.integration.fake_upstream import (
    FakeOpenAI,
    Reply,
    chunk,
    fake_openai,
    tool_call_chunks,
    tool_call_response,
)

pytestmark = pytest.mark.integration

FAKE = "fake-tools"
ARGS = '{"city": "Paris", "units": "celsius", "days": [1, 2, 3], "note": "naïve \\"quoted\\""}'
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def _script(request: dict[str, Any]) -> Reply:
    last = request["messages"][-1]["content"]
    if last == "drop":
        return Reply(chunks=[chunk({"role": "assistant", "content": "par"})], drop=True)
    if last == "boom":
        return Reply(status=500, body={"error": {"message": "out of memory", "code": 500}})
    if request.get("stream"):
        return Reply(chunks=tool_call_chunks("get_weather", ARGS, pieces=12))
    return Reply(body=tool_call_response("get_weather", ARGS))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(_script) as f:
        yield f


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, smollm_path: Path, fake: FakeOpenAI
) -> Iterator[Gateway]:
    g = _start(tmp_path_factory.mktemp("anthropic"), models=[{"name": FAKE, "url": fake.url}])
    yield g
    stop(g)


@pytest.fixture(scope="module")
def client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-test", max_retries=0)


def assert_conforms(model_cls: Any, data: dict[str, Any]) -> Any:
    obj = TypeAdapter(model_cls).validate_python(data)
    _no_extras(obj, getattr(model_cls, "__name__", "event"))
    return obj


def _no_extras(obj: Any, path: str) -> None:
    if isinstance(obj, BaseModel):
        assert not obj.model_extra, (
            f"{path} has fields Anthropic does not define: {obj.model_extra}"
        )
        for name in type(obj).model_fields:
            _no_extras(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            _no_extras(item, f"{path}[{i}]")


def _user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_message_conforms(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=12, system="Be brief.", messages=_user("Say hello.")
    )
    msg = assert_conforms(Message, json.loads(raw.http_response.text))
    assert msg.model == MODEL and msg.role == "assistant" and msg.type == "message"
    assert msg.id.startswith("msg_") and msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens") and msg.stop_sequence is None
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 12


def test_system_blocks_and_content_blocks(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model=MODEL,
        max_tokens=3,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hi."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
            {"role": "user", "content": [{"type": "text", "text": "Tell a long story."}]},
        ],
    )
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3


def test_tool_use_and_result_blocks_reach_the_engine(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model=MODEL,
        max_tokens=4,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                    {"type": "text", "text": "Summarise."},
                ],
            },
        ],
    )
    assert msg.content[0].type == "text" and msg.usage.input_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence(client: anthropic.Anthropic, stream: bool) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 40,
        "extra_body": {"temperature": 0},
        "stop_sequences": ["e"],
        "messages": _user("Describe the sea in one sentence."),
    }
    if stream:
        with client.messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kwargs)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "e"
    assert "e" not in msg.content[0].text  # type: ignore[union-attr]


def _raw_events(gw: Gateway, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with gw.http.stream(
        "POST",
        "/v1/messages",
        json=body,
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    names = [line[len("event: ") :] for line in lines[0::2]]
    datas = [json.loads(line[len("data: ") :]) for line in lines[1::2]]
    assert all(n == d["type"] for n, d in zip(names, datas, strict=True))
    return list(zip(names, datas, strict=True))


def test_stream_event_sequence_conforms(gw: Gateway) -> None:
    body = {"model": MODEL, "max_tokens": 8, "stream": True, "messages": _user("Say hello.")}
    events = _raw_events(gw, body)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    for name, data in events:
        if name != "ping":
            assert_conforms(RawMessageStreamEvent, data)
    start, delta = events[0][1], events[-2][1]
    assert start["message"]["stop_reason"] is None and start["message"]["content"] == []
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert delta["usage"]["output_tokens"] > 0 and delta["usage"]["input_tokens"] > 0
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text


def test_stream_through_the_client(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=8, messages=_user("Hi")) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_tool_use_streamed_in_fragments(gw: Gateway, client: anthropic.Anthropic) -> None:
    body = {"model": FAKE, "max_tokens": 50, "stream": True, "tools": [WEATHER]}
    events = _raw_events(gw, {**body, "messages": _user("Weather?")})
    for name, data in events:
        if name != "ping":
            assert_conforms(RawMessageStreamEvent, data)
    start = next(d for n, d in events if n == "content_block_start")
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "call_fake1",
        "name": "get_weather",
        "input": {},
    }
    parts = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert len(parts) == 12 and "".join(parts) == ARGS
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    with client.messages.stream(
        model=FAKE,
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=_user("Weather?"),
    ) as s:
        final = s.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use" and block.input == json.loads(ARGS)
    assert final.stop_reason == "tool_use"


def test_tool_use_plain(gw: Gateway, client: anthropic.Anthropic, fake: FakeOpenAI) -> None:
    msg = client.messages.create(
        model=FAKE,
        max_tokens=50,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=_user("Weather?"),
    )
    assert msg.stop_reason == "tool_use" and msg.usage.output_tokens == 7
    block = msg.content[0]
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == json.loads(ARGS)
    sent = fake.requests[-1]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


# -- errors ------------------------------------------------------------------------------


def _error(exc: anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert_conforms(ErrorResponse, body)
    return dict(body["error"])


def test_unknown_model_is_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as exc:
        client.messages.create(model="no-such-model", max_tokens=4, messages=_user("x"))
    err = _error(exc.value)
    assert err["type"] == "not_found_error" and MODEL in err["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "smollm2-135m", "max_tokens": 4, "messages": []}',
        b'{"model": "smollm2-135m", "max_tokens": 4, '
        b'"messages": [{"role": "system", "content": "x"}]}',
        b'{"model": "smollm2-135m", "max_tokens": 4, "messages": [{"role": "user", "content": '
        b'[{"type": "hologram"}]}]}',
        b'{"model": "smollm2-135m", "max_tokens": 4, '
        b'"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "maybe"}}',
    ],
)
def test_malformed_body_is_400(gw: Gateway, body: bytes) -> None:
    resp = gw.http.post("/v1/messages", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert_conforms(ErrorResponse, resp.json())
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_upstream_5xx_is_api_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as exc:
        client.messages.create(model=FAKE, max_tokens=4, messages=_user("boom"))
    assert exc.value.status_code == 502 and _error(exc.value)["type"] == "api_error"
    assert "out of memory" in _error(exc.value)["message"]


def test_stream_dropped_by_upstream_ends_with_error_event(gw: Gateway) -> None:
    events = _raw_events(
        gw, {"model": FAKE, "max_tokens": 5, "stream": True, "messages": _user("drop")}
    )
    assert events[0][0] == "message_start" and events[-1][0] == "error"
    assert_conforms(ErrorResponse, events[-1][1])
    assert events[-1][1]["error"]["type"] == "api_error"


def test_unknown_route_under_messages_is_anthropic_shaped(gw: Gateway) -> None:
    resp = gw.http.get("/v1/messages/nowhere")
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found_error"
