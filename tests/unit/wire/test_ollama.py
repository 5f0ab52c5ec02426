"""Ollama ⇄ OpenAI translation, pure; and the same conversation through all three dialects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from ollama import ChatResponse, GenerateResponse

from ml_offload.errors import InvalidRequest
from ml_offload.wire import anthropic, ollama
from tests.integration.fake_upstream import chunk, tool_call_chunks

ARGS = '{"query": "a \\"quoted\\" word", "limit": 10, "tags": ["x", "y"], "deep": {"z": null}}'


def clock(*values: int) -> Iterator[int]:
    yield from values


def run(kind: Any, chunks: list[dict[str, Any]], times: list[int] | None = None) -> list[Any]:
    ticks = iter(times or range(1000, 100000, 10))
    tr = ollama.StreamTranslator(kind, "m:latest", 0, clock=lambda: next(ticks))
    tr.opened()
    out = []
    for c in chunks:
        out += tr.feed(c)
    return out + tr.finish()


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict[str, Any]]:
    out = [chunk({"content": p}) for p in pieces] + [chunk({}, finish)]
    usage = {"prompt_tokens": 7, "completion_tokens": len(pieces), "total_tokens": 0}
    return [*out, {**chunk({}), "choices": [], "usage": usage}]


def chat(**kw: Any) -> ollama.ChatRequest:
    return ollama.ChatRequest.model_validate({"model": "m", **kw})


def test_chat_request_options_and_format() -> None:
    options = {"temperature": 0.2, "num_predict": 9, "stop": ["\n"], "seed": 3, "num_ctx": 99}
    out = ollama.chat_to_openai(
        chat(messages=[{"role": "user", "content": "hi"}], options=options, format="json")
    )
    assert out == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "seed": 3,
        "stop": ["\n"],
        "max_tokens": 9,
        "response_format": {"type": "json_object"},
    }
    schema = {"type": "object"}
    out = ollama.chat_to_openai(chat(format=schema, options={"num_predict": -1}))
    assert out["response_format"]["json_schema"]["schema"] == schema and "max_tokens" not in out
    with pytest.raises(InvalidRequest):
        ollama.chat_to_openai(chat(format="yaml"))


def test_images_become_parts() -> None:
    out = ollama.chat_to_openai(chat(messages=[{"role": "user", "content": "?", "images": ["QQ"]}]))
    assert out["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,QQ"},
    }


def test_generate_request() -> None:
    req = ollama.GenerateRequest.model_validate({"model": "m", "prompt": "p", "system": "s"})
    kind, out = ollama.generate_to_openai(req)
    assert kind == "chat" and out["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "p"},
    ]
    raw = ollama.GenerateRequest.model_validate({"model": "m", "prompt": "p", "raw": True})
    assert ollama.generate_to_openai(raw) == ("completion", {"model": "m", "prompt": "p"})
    with pytest.raises(InvalidRequest):
        ollama.generate_to_openai(
            ollama.GenerateRequest.model_validate({"model": "m", "prompt": "p", "suffix": "s"})
        )


def test_chat_stream_counts_and_durations() -> None:
    # clock: opened, first token, end (the second piece does not read the clock)
    out = run("chat", text_chunks("Hel", "lo"), times=[100, 250, 900])
    for obj in out:
        ChatResponse.model_validate(obj)
    assert [o["message"]["content"] for o in out] == ["Hel", "lo", ""]
    final = out[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 7 and final["eval_count"] == 2
    assert final["load_duration"] == 100 and final["prompt_eval_duration"] == 150
    assert final["eval_duration"] == 650 and final["total_duration"] == 900
    folded = ollama.fold(out)
    assert folded["message"] == {"role": "assistant", "content": "Hello"} and folded["done"]


def test_generate_stream_and_length() -> None:
    out = run("generate", text_chunks("a", "b", finish="length"))
    for obj in out:
        GenerateResponse.model_validate(obj)
    assert out[-1]["done_reason"] == "length" and ollama.fold(out)["response"] == "ab"


@pytest.mark.parametrize("pieces", [1, 5, len(ARGS)])
def test_tool_call_fragments_arrive_whole(pieces: int) -> None:
    out = run("chat", tool_call_chunks("search", ARGS, pieces))
    calls = [c for o in out for c in o["message"].get("tool_calls") or []]
    assert calls == [{"function": {"name": "search", "arguments": json.loads(ARGS)}}]
    ChatResponse.model_validate(ollama.fold(out))
    assert ollama.fold(out)["message"]["tool_calls"] == calls


def test_tool_messages_get_matching_ids() -> None:
    calls = [
        {"function": {"name": "a", "arguments": {"x": 1}}},
        {"function": {"name": "b", "arguments": {}}},
    ]
    req = chat(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "content": "B", "tool_name": "b"},
            {"role": "tool", "content": "A"},
        ]
    )
    sent = ollama.chat_to_openai(req)["messages"]
    ids = [c["id"] for c in sent[1]["tool_calls"]]
    assert sent[2]["tool_call_id"] == ids[1] and sent[3]["tool_call_id"] == ids[0]


def test_model_names_and_unload() -> None:
    assert ollama.model_names("x:latest") == ("x:latest", "x")
    assert ollama.model_names("x:7b") == ("x:7b",)
    assert ollama.tag("x") == "x:latest" and ollama.tag("x:7b") == "x:7b"
    assert ollama.is_unload(0) and ollama.is_unload("0s") and not ollama.is_unload("5m")


# -- one conversation, three dialects ----------------------------------------------------


def test_anthropic_and_ollama_requests_agree_on_openai() -> None:
    a = anthropic.MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {"c": 1}}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "Sun"}],
                },
            ],
        }
    )
    o = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "t1", "function": {"name": "w", "arguments": {"c": 1}}}],
            },
            {"role": "tool", "content": "Sun", "tool_name": "w"},
        ],
        options={"num_predict": 5},
    )
    from_a, from_o = anthropic.to_openai(a), ollama.chat_to_openai(o)
    from_o["messages"][2]["content"] = None  # Ollama sends "" where Anthropic has no text
    assert from_a["messages"] == from_o["messages"] and from_a["max_tokens"] == from_o["max_tokens"]


def test_one_stream_reads_the_same_in_both_dialects() -> None:
    chunks = text_chunks("The ", "answer") + tool_call_chunks("search", ARGS, 11)
    a = anthropic.fold(_anthropic_events(chunks))
    o = ollama.fold(run("chat", chunks))
    assert a["content"][0]["text"] == o["message"]["content"] == "The answer"
    assert a["content"][1]["input"] == o["message"]["tool_calls"][0]["function"]["arguments"]
    assert a["stop_reason"] == "tool_use" and o["done_reason"] == "stop"


def _anthropic_events(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tr = anthropic.StreamTranslator("m")
    events: list[dict[str, Any]] = []
    for c in chunks:
        events += tr.feed(c)
    return events + tr.finish()
