"""The OpenAI-compatible API through the official `openai` client, against the real engine.

Every response, stream chunk and error is validated strictly against the `openai` package's
own types: required fields present with the right types, and no fields OpenAI does not define
(the engine adds `timings`; the gateway must not pass it on).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from tests.integration.conftest import MODEL, Gateway, killed_mid_stream, pid_alive

pytestmark = pytest.mark.integration

PROMPTS = [
    "Say hello.",
    "What is 2 + 2?",
    "Name a colour.",
    "Write one word about the sea.",
    "Translate 'cat' to French.",
    "Is the sky blue? Answer yes or no.",
    "List two fruits.",
    "Complete: The quick brown fox",
]


def assert_conforms(model_cls: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    """Validate `data` as `model_cls` and reject any field OpenAI's type does not declare."""
    obj = model_cls.model_validate(data)
    _no_extras(obj, model_cls.__name__)
    return obj


def _no_extras(obj: Any, path: str) -> None:
    if isinstance(obj, BaseModel):
        assert not obj.model_extra, f"{path} has fields OpenAI does not define: {obj.model_extra}"
        for name in type(obj).model_fields:
            _no_extras(getattr(obj, name), f"{path}.{name}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            _no_extras(item, f"{path}[{i}]")


def test_models_list(gateway: Gateway) -> None:
    models = gateway.client.models.list()
    assert MODEL in [m.id for m in models.data]
    raw = gateway.http.get("/v1/models").json()
    for m in raw["data"]:
        assert_conforms(openai.types.Model, m)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chat_conforms(gateway: Gateway, prompt: str) -> None:
    raw = gateway.client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=8
    )
    chat = assert_conforms(ChatCompletion, json.loads(raw.text))
    assert isinstance(chat, ChatCompletion)
    assert chat.model == MODEL and chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


@pytest.mark.parametrize("prompt", PROMPTS[:4])
def test_chat_stream_conforms_with_usage(gateway: Gateway, prompt: str) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = _sse(gateway, body)
    assert events[-1] == "[DONE]"
    chunks = [assert_conforms(ChatCompletionChunk, json.loads(e)) for e in events[:-1]]
    assert all(isinstance(c, ChatCompletionChunk) and c.model == MODEL for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # type: ignore[attr-defined]
    assert text
    usage = chunks[-1].usage  # type: ignore[attr-defined]
    assert usage is not None and usage.completion_tokens > 0 and not chunks[-1].choices  # type: ignore[attr-defined]


def test_chat_stream_without_usage_through_the_client(gateway: Gateway) -> None:
    stream = gateway.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("prompt", PROMPTS[:4])
def test_completions_conform(gateway: Gateway, prompt: str) -> None:
    raw = gateway.client.completions.with_raw_response.create(
        model=MODEL, prompt=prompt, max_tokens=6
    )
    comp = assert_conforms(Completion, json.loads(raw.text))
    assert isinstance(comp, Completion) and comp.model == MODEL and comp.object == "text_completion"
    assert isinstance(comp.choices[0].text, str) and comp.choices[0].finish_reason in (
        "stop",
        "length",
    )
    assert comp.usage is not None and comp.usage.prompt_tokens > 0


def test_completion_stream(gateway: Gateway) -> None:
    events = _sse(
        gateway, {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 6, "stream": True}
    )
    assert events[-1] == "[DONE]"
    chunks = []
    for e in events[:-1]:
        data = json.loads(e)
        # OpenAI's API streams `finish_reason: null` until the last chunk of a legacy completion,
        # though the package's Completion type only admits the final values: check that exactly.
        for c in data["choices"]:
            if c["finish_reason"] is None:
                c["finish_reason"] = "stop"
                assert c is not data["choices"][-1] or e != events[-2]
        chunks.append(assert_conforms(Completion, data))
    assert "".join(c.choices[0].text for c in chunks if c.choices)  # type: ignore[attr-defined]


def test_embeddings_conform(gateway: Gateway) -> None:
    raw = gateway.client.embeddings.with_raw_response.create(
        model=MODEL, input=["hello", "world"], encoding_format="float"
    )
    emb = assert_conforms(CreateEmbeddingResponse, json.loads(raw.text))
    assert isinstance(emb, CreateEmbeddingResponse)
    assert [d.index for d in emb.data] == [0, 1] and len(emb.data[0].embedding) == 576
    assert emb.data[0].embedding != emb.data[1].embedding
    # The client's default asks for base64 and decodes it: the same vectors must come back.
    decoded = gateway.client.embeddings.create(model=MODEL, input=["hello", "world"])
    assert decoded.data[0].embedding == pytest.approx(emb.data[0].embedding, rel=1e-5)


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def test_unknown_model_is_404(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        gateway.client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    err = _error(exc.value)
    assert err["code"] == "model_not_found" and MODEL in err["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"model": "smollm2-135m"}',
        b'{"model": "smollm2-135m", "messages": []}',
        b'{"model": "smollm2-135m", "messages": [{"role": "wizard", "content": "x"}]}',
        b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], '
        b'"max_tokens": -1}',
        b'{"model": "smollm2-135m", "messages": "hello"}',
    ],
)
def test_malformed_body_is_400(gateway: Gateway, body: bytes) -> None:
    resp = gateway.http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]


def test_malformed_body_through_the_client(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        gateway.client.chat.completions.create(model=MODEL, messages=[], max_tokens=4)
    assert _error(exc.value)["param"] == "messages"


def test_engine_rejection_passes_through_as_client_error(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        gateway.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4, n=2
        )
    assert _error(exc.value)["type"] == "invalid_request_error"


def test_disconnect_mid_stream_frees_the_slot(gateway: Gateway) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 400,
        "stream": True,
        "ignore_eos": True,
    }
    with gateway.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        lines = resp.iter_lines()
        got = [line for line in (next(lines) for _ in range(6)) if line.startswith("data:")]
        assert got
        assert gateway.model()["in_flight"] == 1
    engine = gateway.engine()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        busy = [s for s in engine.get("/slots").json() if s.get("is_processing")]
        if gateway.model()["in_flight"] == 0 and not busy:
            break
        time.sleep(0.05)
    assert gateway.model()["in_flight"] == 0, "the gateway kept the slot"
    assert not busy, "the engine kept generating for a client that left"


def test_engine_killed_mid_stream_gives_a_clean_error_then_recovers(gateway: Gateway) -> None:
    gateway.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    pid = gateway.model()["pid"]
    error = killed_mid_stream(gateway.client, MODEL, lambda: os.kill(pid, signal.SIGKILL))
    assert "engine" in str(error.message)
    deadline = time.monotonic() + 5  # the gateway notices when it reaps the child
    while gateway.model()["state"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.05)
    state = gateway.model()
    assert not pid_alive(pid)
    assert state["state"] == "failed" and "exited" in state["last_error"]
    again = gateway.client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert again.choices[0].message.content
    assert gateway.model()["pid"] not in (None, pid)


def _sse(gateway: Gateway, body: dict[str, Any]) -> list[str]:
    with gateway.http.stream(
        "POST", (body.get("messages") and "/v1/chat/completions") or "/v1/completions", json=body
    ) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(
            "text/event-stream"
        )
        return [line[len("data: ") :] for line in resp.iter_lines() if line.startswith("data: ")]
