"""Ollama's API through the official `ollama` client, against the real engine.

Each answer is also read raw and checked against the `ollama` package's types; tool calls come
from a scripted OpenAI-style upstream that streams their arguments in fragments.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import pytest
from ollama import ChatResponse, GenerateResponse, ListResponse, ProcessResponse, ShowResponse

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
TAGGED = f"{MODEL}:latest"
ARGS = '{"city": "Paris", "days": [1, 2], "note": "a \\"quoted\\" word"}'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def _script(request: dict[str, Any]) -> Reply:
    if request["messages"][-1]["content"] == "drop":
        return Reply(chunks=[chunk({"role": "assistant", "content": "par"})], drop=True)
    if request.get("stream"):
        return Reply(chunks=tool_call_chunks("get_weather", ARGS, pieces=9))
    return Reply(body=tool_call_response("get_weather", ARGS))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(_script) as f:
        yield f


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, smollm_path: Path, fake: FakeOpenAI
) -> Iterator[Gateway]:
    g = _start(tmp_path_factory.mktemp("ollama"), models=[{"name": FAKE, "url": fake.url}])
    yield g
    stop(g)


@pytest.fixture(scope="module")
def client(gw: Gateway) -> ollama.Client:
    return ollama.Client(host=gw.url)


def _ndjson(gw: Gateway, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with gw.http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in resp.iter_lines() if line]


def _check_final(final: Any, num_predict: int | None = None) -> None:
    assert final.done is True and final.done_reason in ("stop", "length")
    assert final.prompt_eval_count > 0 and final.eval_count > 0
    assert final.total_duration > 0 and final.eval_duration > 0
    parts = final.load_duration + final.prompt_eval_duration + final.eval_duration
    assert parts <= final.total_duration
    if num_predict is not None:
        assert final.done_reason == "length" and final.eval_count == num_predict


def test_chat_plain_with_latest_tag(client: ollama.Client, gw: Gateway) -> None:
    r = client.chat(
        model=TAGGED,
        messages=[
            {"role": "system", "content": "You tell stories."},
            {"role": "user", "content": "Tell a long story."},
        ],
        options={"num_predict": 5},
        stream=False,
    )
    assert r.model == TAGGED and r.message.role == "assistant" and r.message.content
    _check_final(r, num_predict=5)
    raw = gw.http.post(
        "/api/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False},
    )
    assert raw.headers["content-type"] == "application/json"
    ChatResponse.model_validate(raw.json())
    assert set(raw.json()) <= set(ChatResponse.model_fields)


def test_chat_streamed(client: ollama.Client, gw: Gateway) -> None:
    parts = list(
        client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell a long story."}],
            options={"num_predict": 6},
            stream=True,
        )
    )
    assert len(parts) > 2 and all(not p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts)
    _check_final(parts[-1], num_predict=6)
    raw = _ndjson(
        gw, "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    )  # streaming is the default
    for obj in raw:
        ChatResponse.model_validate(obj)
        assert set(obj) <= set(ChatResponse.model_fields)
    assert raw[-1]["done"] is True and raw[-1]["message"] == {"role": "assistant", "content": ""}


def test_generate_plain_and_streamed(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="Tell a long story.", options={"num_predict": 4})
    assert isinstance(r, GenerateResponse) and r.response
    _check_final(r, num_predict=4)
    parts = list(
        client.generate(
            model=TAGGED,
            prompt="Once upon a time",
            system="You tell stories.",
            stream=True,
            options={"num_predict": 4},
        )
    )
    assert "".join(p.response for p in parts) and parts[-1].done
    _check_final(parts[-1], num_predict=4)


def test_generate_raw_and_stop(client: ollama.Client) -> None:
    r = client.generate(
        model=MODEL, prompt="1, 2, 3, 4,", raw=True, options={"num_predict": 12, "stop": ["7"]}
    )
    assert r.done and "7" not in (r.response or "")


def test_load_and_unload_with_empty_prompt(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="")
    assert r.done and r.done_reason == "load"
    assert TAGGED in [m.model for m in client.ps().models]
    r = client.generate(model=MODEL, prompt="", keep_alive=0)
    assert r.done_reason == "unload"
    assert TAGGED not in [m.model for m in client.ps().models]


def test_tags_ps_show_version(client: ollama.Client, gw: Gateway) -> None:
    client.generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    tags = gw.http.get("/api/tags").json()
    ListResponse.model_validate(tags)
    listed = {m["name"]: m for m in tags["models"]}
    assert TAGGED in listed and listed[TAGGED]["details"]["format"] == "gguf"
    assert listed[TAGGED]["details"]["quantization_level"] and len(listed[TAGGED]["digest"]) == 64
    ps = client.ps()
    assert isinstance(ps, ProcessResponse)
    loaded = {m.model: m for m in ps.models}
    assert TAGGED in loaded and loaded[TAGGED].size and loaded[TAGGED].context_length == 512
    show = client.show(TAGGED)
    assert isinstance(show, ShowResponse) and show.details and show.details.family == "llama"
    assert show.modelinfo and show.modelinfo["llama.block_count"] == 30
    assert "completion" in (show.capabilities or [])
    assert gw.http.get("/api/version").json()["version"]


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    e = client.embed(model=TAGGED, input=["hello", "world"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0]) == 576
    assert e.embeddings[0] != e.embeddings[1] and e.prompt_eval_count
    one = client.embed(model=MODEL, input="hello")
    assert one.embeddings[0] == pytest.approx(e.embeddings[0], rel=1e-4)
    legacy = client.embeddings(model=MODEL, prompt="hello")
    assert len(legacy.embedding) == 576


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_from_fragments(client: ollama.Client, fake: FakeOpenAI, stream: bool) -> None:
    messages = [{"role": "user", "content": "Weather?"}]
    if stream:
        parts = list(client.chat(model=FAKE, messages=messages, tools=TOOLS, stream=True))
        calls = [c for p in parts for c in p.message.tool_calls or []]
        assert parts[-1].done
    else:
        calls = list(
            client.chat(model=FAKE, messages=messages, tools=TOOLS).message.tool_calls or []
        )
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert dict(calls[0].function.arguments) == json.loads(ARGS)
    assert fake.requests[-1]["tools"] == TOOLS


def test_tool_round_trip_names_the_call(client: ollama.Client, fake: FakeOpenAI) -> None:
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    client.chat(
        model=FAKE,
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "Sunny", "tool_name": "get_weather"},
        ],
    )
    sent = fake.requests[-1]["messages"]
    call_id = sent[1]["tool_calls"][0]["id"]
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "content": "Sunny", "tool_call_id": call_id}


# -- errors ------------------------------------------------------------------------------


def test_unknown_model_is_404(client: ollama.Client, gw: Gateway) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 404 and MODEL in exc.value.error
    resp = gw.http.post("/api/show", json={"model": "nope"})
    assert resp.status_code == 404 and set(resp.json()) == {"error"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", b"{not json"),
        ("/api/chat", b'{"messages": []}'),
        ("/api/chat", b'{"model": "smollm2-135m", "messages": [{"role": "wizard"}]}'),
        ("/api/generate", b'{"model": "smollm2-135m", "prompt": "x", "format": "yaml"}'),
        ("/api/embed", b'{"model": "smollm2-135m", "input": []}'),
    ],
)
def test_malformed_body_is_400(gw: Gateway, path: str, body: bytes) -> None:
    resp = gw.http.post(path, content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert set(resp.json()) == {"error"} and isinstance(resp.json()["error"], str)


def test_stream_dropped_by_upstream_ends_with_error_line(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        list(client.chat(model=FAKE, messages=[{"role": "user", "content": "drop"}], stream=True))
    assert "engine" in exc.value.error


def test_unknown_route_is_ollama_shaped(gw: Gateway) -> None:
    resp = gw.http.get("/api/nowhere")
    assert resp.status_code == 404 and set(resp.json()) == {"error"}
