"""Anthropic ⇄ OpenAI translation, pure: requests, responses, stream events, errors.

Every event and message produced is validated against the `anthropic` package's types.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from ml_offload.errors import (
    EngineError,
    EngineTimeout,
    InvalidRequest,
    ModelNotFound,
    OverCapacity,
    Unavailable,
)
from ml_offload.wire import anthropic as wire
from tests.integration.fake_upstream import chunk, tool_call_chunks, tool_call_response

EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
ARGS = (
    '{"query": "ml-offload \\"gateway\\"", "limit": 10, "tags": ["a", "b"], "nested": {"x": 1.5}}'
)


def req(**kw: Any) -> wire.MessagesRequest:
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], **kw}
    return wire.MessagesRequest.model_validate(body)


def run(chunks: list[dict[str, Any]], stops: list[str] | None = None) -> list[dict[str, Any]]:
    tr = wire.StreamTranslator("m", stops)
    events: list[dict[str, Any]] = []
    for c in chunks:
        events += tr.feed(c)
        if tr.stopped:
            break
    events += tr.finish()
    for e in events:
        if e["type"] != "ping":
            EVENT.validate_python(e)
    return events


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict[str, Any]]:
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in pieces]
    out.append(chunk({}, finish))
    usage = {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 0}
    out.append({**chunk({}), "choices": [], "usage": usage})
    return out


# -- requests ----------------------------------------------------------------------------


def test_system_string_and_blocks() -> None:
    assert wire.to_openai(req(system="Be brief."))["messages"][0] == {
        "role": "system",
        "content": "Be brief.",
    }
    blocks = [{"type": "text", "text": "A."}, {"type": "text", "text": "B."}]
    assert wire.to_openai(req(system=blocks))["messages"][0]["content"] == "A.\n\nB."
    with pytest.raises(InvalidRequest) as exc:
        wire.to_openai(req(system=[{"type": "image"}]))
    assert exc.value.param == "system.0"


def test_parameters_and_no_stop_forwarded() -> None:
    out = wire.to_openai(req(temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["X"]))
    assert out == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
    }


def test_metadata_user_id_is_the_user() -> None:
    assert wire.to_openai(req(metadata={"user_id": "session-7"}))["user"] == "session-7"
    assert "user" not in wire.to_openai(req(metadata={"user_id": ""}))
    assert "user" not in wire.to_openai(req(metadata="x"))


def test_content_blocks_and_images() -> None:
    content = [
        {"type": "text", "text": "What is"},
        {"type": "text", "text": "this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}},
    ]
    msg = wire.to_openai(req(messages=[{"role": "user", "content": content}]))["messages"][0]
    assert msg["content"] == [
        {"type": "text", "text": "What is"},
        {"type": "text", "text": "this?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}},
    ]
    only_text = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    msgs = wire.to_openai(req(messages=[{"role": "user", "content": only_text}]))["messages"]
    assert msgs == [{"role": "user", "content": "a\nb"}]


def test_tool_use_and_results_become_tool_calls_and_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "w", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here:"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "no data"}],
                    "is_error": True,
                },
            ],
        },
    ]
    out = wire.to_openai(req(messages=messages))["messages"]
    assert out[1]["content"] == "Checking."
    assert [c["id"] for c in out[1]["tool_calls"]] == ["toolu_1", "toolu_2"]
    assert json.loads(out[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no data"},
        {"role": "user", "content": "Here:"},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "w", "disable_parallel_tool_use": True},
            {
                "tool_choice": {"type": "function", "function": {"name": "w"}},
                "parallel_tool_calls": False,
            },
        ),
    ],
)
def test_tools_and_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    tool = {"name": "w", "description": "Weather", "input_schema": {"type": "object"}}
    out = wire.to_openai(req(tools=[tool], tool_choice=choice))
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "w", "parameters": {"type": "object"}, "description": "Weather"},
        }
    ]
    assert {k: out[k] for k in expected} == expected


def test_unsupported_block_names_its_place() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "hologram"}]}]
    with pytest.raises(InvalidRequest) as exc:
        wire.to_openai(req(messages=messages))
    assert exc.value.param == "messages.0.content.1.type" and "hologram" in exc.value.message


# -- responses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_response_stop_reasons_and_usage(finish: str | None, reason: str) -> None:
    resp = {
        "choices": [{"message": {"role": "assistant", "content": "Hi"}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    out = wire.from_openai(resp, "m")
    Message.model_validate(out)
    assert out["stop_reason"] == reason and out["content"] == [{"type": "text", "text": "Hi"}]
    assert out["usage"] == {"input_tokens": 3, "output_tokens": 2}


def test_response_tool_calls() -> None:
    out = wire.from_openai(tool_call_response("search", ARGS), "m")
    Message.model_validate(out)
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [
        {"type": "tool_use", "id": "call_fake1", "name": "search", "input": json.loads(ARGS)}
    ]


# -- streams -----------------------------------------------------------------------------


def test_text_stream_event_sequence() -> None:
    events = run(text_chunks("Hel", "lo", "!"))
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2]["usage"] == {"input_tokens": 5, "output_tokens": 3}
    message = wire.fold(events)
    Message.model_validate(message)
    assert message["content"] == [{"type": "text", "text": "Hello!"}]


def test_length_becomes_max_tokens() -> None:
    assert run(text_chunks("a", finish="length"))[-2]["delta"]["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("pieces", [1, 3, 17, len(ARGS)])
def test_tool_call_arguments_in_many_fragments_stay_intact(pieces: int) -> None:
    events = run(tool_call_chunks("search", ARGS, pieces))
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert all(d["type"] == "input_json_delta" for d in deltas)
    assert len(deltas) == len(tool_call_chunks("search", ARGS, pieces)) - 3
    assert "".join(d["partial_json"] for d in deltas) == ARGS
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    message = wire.fold(events)
    Message.model_validate(message)
    assert message["content"][0]["input"] == json.loads(ARGS)


def test_text_then_two_tool_calls_use_consecutive_blocks() -> None:
    calls = [
        chunk({"content": "Let me look."}),
        chunk(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]}
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g"}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"y": [2]}'}}]}),
        chunk({}, "tool_calls"),
    ]
    events = run(calls)
    shape = [(e["type"], e.get("index")) for e in events if e["type"].startswith("content")]
    assert shape == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
    ]
    content = wire.fold(events)["content"]
    assert content == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "b", "name": "g", "input": {"y": [2]}},
    ]


def test_stop_sequence_split_over_chunks() -> None:
    events = run(text_chunks("The qu", "ick br", "own fox"), stops=["ck b", "zzz"])
    message = wire.fold(events)
    assert message["content"][0]["text"] == "The qui"
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "ck b"
    assert message["usage"]["output_tokens"] == 2  # no usage came: pieces seen so far


def test_held_back_text_is_flushed_when_no_stop_matches() -> None:
    message = wire.fold(run(text_chunks("abc", "xy"), stops=["xyz"]))
    assert message["content"][0]["text"] == "abcxy" and message["stop_reason"] == "end_turn"


def test_empty_generation_gives_one_empty_text_block() -> None:
    events = run(text_chunks())
    assert wire.fold(events)["content"] == [{"type": "text", "text": ""}]


def test_sse_framing() -> None:
    frame = wire.sse({"type": "ping"})
    assert frame == b'event: ping\ndata: {"type":"ping"}\n\n'


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (InvalidRequest("bad"), "invalid_request_error"),
        (ModelNotFound("no"), "not_found_error"),
        (OverCapacity("busy"), "rate_limit_error"),
        (Unavailable("full"), "overloaded_error"),
        (EngineError("crash"), "api_error"),
        (EngineTimeout("slow"), "timeout_error"),
    ],
)
def test_error_bodies(exc: Any, kind: str) -> None:
    body = wire.error_body(exc)
    ErrorResponse.model_validate(body)
    assert body == {"type": "error", "error": {"type": kind, "message": exc.message}}


def test_message_start_waits_for_the_prompt_tokens_and_carries_them() -> None:
    tr = wire.StreamTranslator("m")
    assert tr.feed(chunk({"role": "assistant", "content": None})) == []  # nothing known yet
    events = tr.feed(chunk({"content": "🚀"}), prompt_tokens=44)
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["usage"]["input_tokens"] == 44
    assert [e["type"] for e in events[1:]] == ["content_block_start", "ping", "content_block_delta"]


def test_message_start_from_the_usage_when_nothing_came_before() -> None:
    tr = wire.StreamTranslator("m")
    usage = {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}
    events = tr.feed({**chunk({}), "choices": [], "usage": usage}) + tr.finish()
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["usage"]["input_tokens"] == 7
    assert events[-1]["type"] == "message_stop"


def test_server_tools_are_left_out_of_a_translated_request_and_named() -> None:
    tools = [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "code_execution_20250522", "name": "code_execution"},
        {"name": "get_weather", "input_schema": {"type": "object"}},
    ]
    r = req(tools=tools)
    assert wire.server_tools(r) == ["web_search", "code_execution"]
    assert [t["function"]["name"] for t in wire.to_openai(r)["tools"]] == ["get_weather"]
    only = req(tools=tools[:1])
    assert "tools" not in wire.to_openai(only)


def test_metadata_user_id_becomes_openais_user() -> None:
    assert wire.to_openai(req(metadata={"user_id": "conv-9"}))["user"] == "conv-9"
    assert "user" not in wire.to_openai(req(metadata={"other": 1}))
