"""Responses API ⇄ chat completions, pure: input items, requests, response objects, stream
events. Every response object and event is validated against the `openai` package's types."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ml_offload.errors import InvalidRequest, Unavailable
from ml_offload.wire import responses as wire
from ml_offload.wire.responses_stream import ResponseStream
from tests.integration.fake_upstream import chunk, tool_call_chunks, tool_call_response

EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def req(**kw: Any) -> wire.ResponsesRequest:
    return wire.parse_request(orjson.dumps({"model": "m", "input": "hi", **kw}))


def chat(r: wire.ResponsesRequest) -> dict[str, Any]:
    return wire.to_chat(r, wire.input_items(r))


def test_text_input_and_settings() -> None:
    r = req(
        instructions="Be brief.",
        max_output_tokens=9,
        temperature=0.2,
        top_p=0.9,
        reasoning={"effort": "low"},
        user="u1",
    )
    assert chat(r) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 9,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "reasoning_effort": "low",
    }


def test_message_items_function_calls_and_outputs() -> None:
    r = req(
        input=[
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "b"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"x":1}'},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]},
        ]
    )
    messages = chat(r)["messages"]
    assert messages[0] == {"role": "system", "content": "Use tools."}
    assert messages[1] == {"role": "user", "content": "a"}
    assert messages[2]["role"] == "assistant" and messages[2]["content"] == "b"
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]  # one assistant turn
    assert messages[2]["tool_calls"][1]["function"] == {"name": "g", "arguments": '{"x":1}'}
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "one"}
    assert messages[4] == {"role": "tool", "tool_call_id": "c2", "content": "two"}
    image = {"type": "image_url", "image_url": {"url": "data:x"}}
    assert messages[5] == {"role": "user", "content": [image]}
    assert len(messages) == 6  # the reasoning item gives a chat backend nothing
    items = wire.input_items(r)
    assert all(item.get("id") for item in items)


def test_function_tools_and_choice() -> None:
    web = {"type": "web_search"}
    r = req(tools=[TOOL, web], tool_choice={"type": "function", "name": "f"})
    out = chat(r)
    assert out["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": TOOL["parameters"]}}
    ]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert wire.dropped_tools(r) == ["web_search"]
    assert chat(req(tools=[TOOL], tool_choice="required"))["tool_choice"] == "required"
    assert "tool_choice" not in chat(req(tool_choice="auto"))  # no tools: nothing to choose


@pytest.mark.parametrize(
    "body",
    [
        {"input": []},
        {"input": [{"type": "bogus"}]},
        {"input": [{"role": "robot", "content": "x"}]},
        {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        {"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
        {"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]},
        {"input": ["text"]},
        {"tools": [TOOL], "tool_choice": {"type": "file_search"}},
    ],
)
def test_bad_input_is_an_invalid_request(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        chat(req(**body))


def test_from_chat_text_and_tool_calls() -> None:
    r = req(tools=[TOOL], metadata={"k": "v"})
    answer = {
        "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {**USAGE, "prompt_tokens_details": {"cached_tokens": 3}},
    }
    out = wire.from_chat(answer, r, "resp_1", 100)
    parsed = Response.model_validate(out)
    assert parsed.output_text == "ok" and parsed.status == "completed"
    assert parsed.metadata == {"k": "v"} and parsed.tools[0].type == "function"
    assert parsed.usage is not None and parsed.usage.input_tokens_details.cached_tokens == 3
    calls = Response.model_validate(
        wire.from_chat(tool_call_response("f", '{"a": 1}'), r, "resp_2", 100)
    )
    call = calls.output[0]
    assert call.type == "function_call" and call.call_id == "call_fake1"
    assert call.arguments == '{"a": 1}' and len(calls.output) == 1
    cut = {"choices": [{"message": {"content": "tr"}, "finish_reason": "length"}]}
    short = Response.model_validate(wire.from_chat(cut, r, "resp_3", 100))
    assert short.status == "incomplete" and short.incomplete_details is not None
    assert short.incomplete_details.reason == "max_output_tokens"
    thought = {"choices": [{"message": {"content": "a", "reasoning_content": "hmm"}}]}
    reasoned = Response.model_validate(wire.from_chat(thought, r, "resp_4", 100))
    assert [o.type for o in reasoned.output] == ["reasoning", "message"]


def run(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], ResponseStream]:
    tr = ResponseStream(req(), "resp_s", 100)
    events = tr.start()
    for c in chunks:
        events += tr.feed(c)
    events += tr.finish()
    for event in events:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events, tr


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_stream_text_then_tool_call() -> None:
    chunks = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Let me"})]
    chunks += [chunk({"content": " look."}), *tool_call_chunks("f", '{"q": "x y"}', pieces=3)]
    events, tr = run(chunks)
    assert kinds(events)[:9] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds(events)[9] == "response.output_item.added"
    assert kinds(events)[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    text_done = next(e for e in events if e["type"] == "response.output_text.done")
    assert text_done["text"] == "Let me look." and text_done["output_index"] == 0
    args = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert {e["output_index"] for e in args} == {1} and len(args) > 1
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Let me look." and final.output[1].type == "function_call"
    assert final.output[1].arguments == '{"q": "x y"}' and tr.response == events[-1]["response"]
    assert final.usage is not None and final.usage.input_tokens == 11


def test_stream_with_no_output_has_one_empty_message_and_incomplete_on_length() -> None:
    events, _ = run([chunk({}, "length"), {**chunk({}), "choices": [], "usage": USAGE}])
    assert kinds(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "incomplete" and final.output_text == ""
    assert final.usage is not None and final.usage.total_tokens == 7


def test_error_event_and_framing() -> None:
    event = {**wire.error_event(Unavailable("engine gone")), "sequence_number": 4}
    EVENT.validate_python(event)
    frame = wire.sse(event)
    assert frame.startswith(b"event: error\ndata: {") and frame.endswith(b"\n\n")


def test_stream_reasoning_then_text() -> None:
    chunks = [chunk({"reasoning_content": "think"}), chunk({"reasoning_content": "ing"})]
    chunks += [chunk({"content": "done"}), chunk({}, "stop")]
    events, _ = run(chunks)
    assert kinds(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = Response.model_validate(events[-1]["response"])
    reasoning, message = final.output
    assert message.type == "message" and message.status == "completed"
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "thinking" and final.output_text == "done"


def test_text_format_as_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    r = req(text={"format": fmt})
    assert chat(r)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    assert wire.response_object(r, "resp_x", 1, [], "completed")["text"] == {"format": fmt}
    object_format = req(text={"format": {"type": "json_object"}})
    assert chat(object_format)["response_format"] == {"type": "json_object"}
    assert "response_format" not in chat(req(text={"format": {"type": "text"}}))
    with pytest.raises(InvalidRequest):
        chat(req(text={"format": {"type": "yaml"}}))
