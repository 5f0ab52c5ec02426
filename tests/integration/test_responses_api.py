"""OpenAI's Responses API (issue 15) through the official `openai` client.

Most cases run on a scripted chat upstream (fast, and a tool call for certain); a few on the
real SmolLM2 engine: plain and streamed answers, and a conversation continued with
`previous_response_id` across two restarts of the gateway on the same data folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.conftest import MODEL, Gateway, GatewayFactory, _start, stop
from tests.integration.fake_upstream import (
    FakeOpenAI,
    Reply,
    chunk,
    fake_openai,
    tool_call_chunks,
    tool_call_response,
)

pytestmark = pytest.mark.integration

FAKE = "fake-chat"
ADMIN = "mlo-admin-responses-test-0123456789"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def _script(request: dict[str, Any]) -> Reply:
    """A tool call when tools are offered and the last message is not a tool result; else
    text that says how many messages the model saw (so continuations are visible)."""
    messages = request["messages"]
    if request.get("tools") and messages[-1]["role"] != "tool":
        if request.get("stream"):
            return Reply(chunks=tool_call_chunks("get_weather", ARGUMENTS, pieces=4))
        return Reply(body=tool_call_response("get_weather", ARGUMENTS))
    text = f"seen {len(messages)}"
    if not request.get("stream"):
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        body = {"id": "c", "object": "chat.completion", "choices": [choice], "usage": USAGE}
        return Reply(body=body)
    pieces = [chunk({"role": "assistant", "content": ""})]
    pieces += [chunk({"content": word}) for word in ("seen", " ", str(len(messages)))]
    pieces += [chunk({}, "stop"), {**chunk({}), "choices": [], "usage": USAGE}]
    return Reply(chunks=pieces)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(_script) as f:
        yield f


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI) -> Iterator[Gateway]:
    g = _start(
        tmp_path_factory.mktemp("responses"),
        demo_model=False,
        security={"audit": {"enabled": False}},
        models=[{"name": FAKE, "url": fake.url}],
    )
    yield g
    stop(g)


TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def _dedup(kinds: list[str]) -> list[str]:
    """The event types with runs of deltas folded to one."""
    return [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1] or "delta" not in k]


def test_create_plain_on_a_chat_upstream(gw: Gateway, fake: FakeOpenAI) -> None:
    resp = gw.client.responses.create(model=FAKE, input="Hello", instructions="Be brief.")
    assert resp.object == "response" and resp.status == "completed"
    assert resp.id.startswith("resp_") and resp.model == FAKE
    assert resp.output_text == "seen 2"  # the instructions as a system message, then the input
    assert fake.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    use = resp.usage
    assert use is not None and (use.input_tokens, use.output_tokens, use.total_tokens) == (7, 3, 10)
    assert resp.output[0].type == "message" and resp.output[0].role == "assistant"


def test_streamed_event_sequence(gw: Gateway) -> None:
    events = list(gw.client.responses.create(model=FAKE, input="Hello", stream=True))
    kinds = [e.type for e in events]
    assert _dedup(kinds) == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas == final.output_text == "seen 1"
    assert final.usage is not None and final.usage.total_tokens == 10
    ids = {e.response.id for e in events if hasattr(e, "response")}  # type: ignore[union-attr]
    assert len(ids) == 1
    # The SDK's accumulating helper takes the same stream.
    with gw.client.responses.stream(model=FAKE, input="Hello") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        done = stream.get_final_response()
    assert text == done.output_text == "seen 1"
    assert gw.client.responses.retrieve(done.id).output_text == "seen 1"  # stored as streamed


def test_function_tool_round_trip(gw: Gateway, fake: FakeOpenAI) -> None:
    first = gw.client.responses.create(model=FAKE, input="Weather in Paris?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert calls[0].arguments == ARGUMENTS and calls[0].call_id == "call_fake1"
    sent = fake.requests[-1]["tools"][0]
    assert sent["type"] == "function" and sent["function"]["name"] == "get_weather"
    assert sent["function"]["parameters"] == WEATHER["parameters"]
    result = {"type": "function_call_output", "call_id": "call_fake1", "output": "18 C, sunny"}
    second = gw.client.responses.create(
        model=FAKE, input=[result], tools=[WEATHER], previous_response_id=first.id
    )
    assert second.output_text == "seen 3" and second.previous_response_id == first.id
    user, call, tool = fake.requests[-1]["messages"]
    assert user == {"role": "user", "content": "Weather in Paris?"}
    assert call["role"] == "assistant" and call["tool_calls"][0]["id"] == "call_fake1"
    assert call["tool_calls"][0]["function"]["arguments"] == ARGUMENTS
    assert tool == {"role": "tool", "tool_call_id": "call_fake1", "content": "18 C, sunny"}


def test_streamed_function_call_events(gw: Gateway) -> None:
    kwargs: dict[str, Any] = {"model": FAKE, "input": "Weather?", "tools": [WEATHER]}
    events = list(gw.client.responses.create(**kwargs, stream=True))
    assert _dedup([e.type for e in events]) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1 and "".join(deltas) == ARGUMENTS
    with gw.client.responses.stream(**kwargs) as stream:
        final = stream.get_final_response()
    call = final.output[0]
    assert call.type == "function_call" and call.arguments == ARGUMENTS
    assert call.status == "completed"


def test_retrieve_delete_and_input_items(gw: Gateway) -> None:
    first = gw.client.responses.create(model=FAKE, input="one", metadata={"run": "7"})
    second = gw.client.responses.create(model=FAKE, input="two", previous_response_id=first.id)
    got = gw.client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == "seen 3"
    assert gw.client.responses.retrieve(first.id).metadata == {"run": "7"}
    items = gw.client.responses.input_items.list(second.id, order="asc")
    kinds = [(i.type, getattr(i, "role", None)) for i in items.data]
    assert kinds == [("message", "user"), ("message", "assistant"), ("message", "user")]
    deleted = gw.http.delete(f"/v1/responses/{second.id}")
    assert deleted.json() == {"id": second.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError, match="not found"):
        gw.client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        gw.client.responses.delete(second.id)
    unstored = gw.client.responses.create(model=FAKE, input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        gw.client.responses.retrieve(unstored.id)


def test_errors_in_openai_shape(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        gw.client.responses.create(model=FAKE, input="x", previous_response_id="resp_nope")
    error = missing.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert error["message"] == "Previous response with id 'resp_nope' not found."
    assert error["param"] == "previous_response_id"
    for body in (
        {"model": FAKE, "input": []},
        {"model": FAKE, "input": [{"type": "bogus"}]},
        {"model": FAKE, "input": [{"role": "user", "content": 5}]},
        {"model": FAKE},
        {"model": FAKE, "input": "x", "max_output_tokens": 0},
        {"model": FAKE, "input": "x", "tools": [WEATHER], "tool_choice": {"type": "what"}},
    ):
        bad = gw.http.post("/v1/responses", json=body)
        assert bad.status_code == 400, (body, bad.text)
        assert bad.json()["error"]["type"] == "invalid_request_error"
    unknown = gw.http.post("/v1/responses", json={"model": "nope", "input": "x"})
    assert unknown.status_code == 404 and "error" in unknown.json()


def test_another_key_gets_404(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(
        demo_model=False,
        security={"admin_key": ADMIN, "audit": {"enabled": False}},
        models=[{"name": FAKE, "url": fake.url}],
    )
    admin = {"authorization": f"Bearer {ADMIN}"}
    one, two = (
        gw.http.post("/admin/keys", json={"name": n}, headers=admin).json()["key"]
        for n in ("one", "two")
    )
    mine = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=one, max_retries=0)
    theirs = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=two, max_retries=0)
    made = mine.responses.create(model=FAKE, input="secret plans")
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model=FAKE, input="and?", previous_response_id=made.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(made.id)
    assert mine.responses.retrieve(made.id).output_text == "seen 1"  # still there
    scoped = gw.http.post(
        "/admin/keys", json={"name": "scoped", "models": ["elsewhere"]}, headers=admin
    ).json()["key"]
    with pytest.raises(openai.PermissionDeniedError, match="may not use model"):
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key=scoped, max_retries=0).responses.create(
            model=FAKE, input="x"
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key="wrong", max_retries=0).responses.create(
            model=FAKE, input="x"
        )


# -- the real model ------------------------------------------------------------------------


def test_real_model_plain_and_streamed(gateway_factory: GatewayFactory, smollm_path: Path) -> None:
    gw = gateway_factory()
    resp = gw.client.responses.create(model=MODEL, input="Say hi", max_output_tokens=8)
    assert resp.status in ("completed", "incomplete") and resp.output_text
    assert resp.usage is not None and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    events = list(
        gw.client.responses.create(model=MODEL, input="Say hi", max_output_tokens=8, stream=True)
    )
    kinds = _dedup([e.type for e in events])
    assert kinds[:-1] == TEXT_EVENTS[:-1]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_previous_response_id_across_two_restarts(tmp_path: Path, smollm_path: Path) -> None:
    """A conversation continued on a restarted gateway (same data folder), twice."""
    ids: list[str] = []
    turns = ["My name is Ada.", "What is my name?", "Say it once more."]
    for turn in turns:
        gw = _start(tmp_path)  # the same config and data folder each time, a new process
        try:
            resp = gw.client.responses.create(
                model=MODEL,
                input=turn,
                max_output_tokens=12,
                previous_response_id=ids[-1] if ids else None,
            )
            assert resp.output_text
            ids.append(resp.id)
            items = gw.client.responses.input_items.list(resp.id, order="asc", limit=100)
            said = [
                part.text  # type: ignore[union-attr]
                for item in items.data
                if item.type == "message" and item.role == "user"
                for part in item.content
            ]
            assert said == turns[: len(ids)]
        finally:
            stop(gw)
