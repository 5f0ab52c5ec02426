"""text-generation-inference behind the gateway, through the official `openai` client: chat via
its Messages API, text completions translated to /generate and /generate_stream, its errors, and
/info in GET /backends. The server is `fake_tgi.FakeTgi` (documents named there)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from tests.integration.conftest import Gateway, GatewayFactory
from tests.integration.fake_tgi import MODEL_ID, FakeTgi

pytestmark = pytest.mark.integration


@pytest.fixture
def tgi() -> Iterator[FakeTgi]:
    with FakeTgi() as fake:
        yield fake


@pytest.fixture
def gw(gateway_factory: GatewayFactory, tgi: FakeTgi) -> Gateway:
    return gateway_factory(
        demo_model=False, models=[{"name": "t", "url": tgi.url, "backend": "tgi"}]
    )


def test_chat_goes_through_the_messages_api(gw: Gateway, tgi: FakeTgi) -> None:
    messages = [{"role": "user", "content": "hi"}]
    chat = gw.client.chat.completions.create(model="t", messages=messages)  # type: ignore[arg-type]
    assert chat.model == "t" and chat.choices[0].message.content == "Hello from TGI"
    assert chat.usage is not None and chat.usage.total_tokens == 12
    stream = gw.client.chat.completions.create(
        model="t",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "Hello from TGI"
    )
    assert [b["messages"] for b in tgi.bodies("/v1/chat/completions")] == [messages, messages]


def test_completion_is_translated_to_generate(gw: Gateway, tgi: FakeTgi) -> None:
    out = gw.client.completions.create(
        model="t", prompt="Say hello", max_tokens=8, temperature=0, top_p=1, stop="TGI", seed=3
    )
    assert out.object == "text_completion" and out.model == "t"
    assert out.choices[0].text == "Hello from TGI" and out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (2, 3)
    sent = tgi.bodies("/generate")[0]
    assert sent["inputs"] == "Say hello"
    assert sent["parameters"] == {  # greedy: no temperature 0, no top_p 1 (TGI refuses both)
        "details": True,
        "decoder_input_details": True,
        "max_new_tokens": 8,
        "do_sample": False,
        "stop": ["TGI"],
        "seed": 3,
    }
    short = gw.client.completions.create(model="t", prompt="Say hello", max_tokens=2)
    assert short.choices[0].text == "Hello from" and short.choices[0].finish_reason == "length"


def test_streamed_completion_from_generate_stream(gw: Gateway, tgi: FakeTgi) -> None:
    stream = gw.client.completions.create(
        model="t",
        prompt="Say hello",
        temperature=0.7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello from TGI"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 4)
    params = tgi.bodies("/generate_stream")[0]["parameters"]
    assert params["temperature"] == 0.7 and params["do_sample"] is True


def test_tgi_errors_reach_the_client(gw: Gateway, tgi: FakeTgi) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        gw.client.completions.create(model="t", prompt="Say hello", max_tokens=1000)
    assert "max_new_tokens" in caught.value.message
    tgi.fail_mid_stream = True
    body = {"model": "t", "prompt": "Say hello", "stream": True}
    with gw.http.stream("POST", "/v1/completions", json=body) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert '"text":"Hello"' in events[0].replace(" ", "")
    assert "illegal memory access" in events[-1] and '"error"' in events[-1]
    with pytest.raises(openai.BadRequestError, match="no embeddings"):
        gw.client.embeddings.create(model="t", input="hi")


def test_backends_shows_the_model_id_from_info(gw: Gateway) -> None:
    deadline = time.monotonic() + 15
    while True:
        entry = {d["model"]: d for d in gw.http.get("/backends").json()["data"]}["t"]
        if entry.get("probe"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert entry["kind"] == "tgi" and entry["healthy"] is True
    assert entry["probe"]["ok"] is True and entry["probe"]["model_id"] == MODEL_ID
