"""Anthropic as a provider: OpenAI chat requests to /v1/messages, its answers and stream events
back to OpenAI's shapes, with tool calls kept whole when split over many deltas."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ml_offload.errors import EngineError, InvalidRequest
from ml_offload.wire import anthropic_provider as wire


def test_request_translation() -> None:
    data: dict[str, Any] = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"q": "x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            {"role": "user", "content": "And now?"},
        ],
        "max_tokens": 50,
        "temperature": 1.5,
        "stop": "END",
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
        "parallel_tool_calls": False,
        "user": "u-1",
        "stream": True,
    }
    body = wire.messages_body(data, "claude-sonnet-4-5")
    assert body["system"] == "Be brief.\n\nUse metric units."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": "x"}},
    ]
    assert body["messages"][2]["content"] == [  # the tool result and the next question merged
        {"type": "tool_result", "tool_use_id": "call_1", "content": "a cat"},
        {"type": "text", "text": "And now?"},
    ]
    assert body["max_tokens"] == 50 and body["temperature"] == 1.0  # Anthropic's range is 0..1
    assert body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "u-1"}
    assert body["tools"] == [{"name": "look", "input_schema": {"type": "object", "properties": {}}}]
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "look",
        "disable_parallel_tool_use": True,
    }
    assert body["stream"] is True and body["model"] == "claude-sonnet-4-5"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})],
)
def test_tool_choice(choice: str, expected: dict[str, Any]) -> None:
    data = {"messages": [{"role": "user", "content": "x"}], "tool_choice": choice}
    assert wire.messages_body(data, "m")["tool_choice"] == expected
    assert wire.messages_body({"messages": []}, "m")["max_tokens"] == wire.DEFAULT_MAX_TOKENS


def test_unsupported_content_is_the_callers_error() -> None:
    data = {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}
    with pytest.raises(InvalidRequest, match="input_audio"):
        wire.messages_body(data, "m")


def test_message_to_chat_completion() -> None:
    out = wire.chat_completion(
        {
            "id": "msg_1",
            "content": [
                {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
                {"type": "text", "text": "Sure."},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1]}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 3},
        }
    )
    message = out["choices"][0]["message"]
    assert message["content"] == "Sure." and message["reasoning_content"] == "Hmm."
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":[1]}'}
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"] == {"prompt_tokens": 15, "completion_tokens": 3, "total_tokens": 18}


def test_stream_with_a_tool_call_in_many_fragments() -> None:
    tr = wire.StreamTranslator()
    arguments = json.dumps({"city": "Paris", "days": [1, 2]})
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_9", "usage": {"input_tokens": 8}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}},
        },
        *(
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": arguments[i : i + 2]},
            }
            for i in range(0, len(arguments), 2)
        ),
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 21},
        },
        {"type": "message_stop"},
    ]
    chunks = [c for e in events for c in tr.feed(e)]
    assert tr.done and all(c["id"] == "msg_9" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hi"
    calls = [call for d in deltas for call in d.get("tool_calls") or []]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_9",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    assert {c["index"] for c in calls} == {0}
    assert "".join(c["function"]["arguments"] for c in calls) == arguments
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 8, "completion_tokens": 21, "total_tokens": 29}


def test_stream_error_event_raises() -> None:
    tr = wire.StreamTranslator()
    with pytest.raises(EngineError, match="overloaded_error: Overloaded"):
        tr.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
