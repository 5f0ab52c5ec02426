"""The OpenAI stream conformer: role on the first delta, one id, usage last, prompt tokens early."""

from __future__ import annotations

from typing import Any

from openai.types.chat import ChatCompletionChunk

from ml_offload.wire.openai_stream import StreamConformer
from tests.integration.fake_upstream import chunk

USAGE = {"prompt_tokens": 44, "completion_tokens": 3, "total_tokens": 47}


def run(chunks: list[dict[str, Any]], want_usage: bool = True) -> list[dict[str, Any]]:
    conform = StreamConformer("chat", "m", want_usage)
    out = [c for raw in chunks for c in conform.feed(raw)] + conform.finish()
    for c in out:
        ChatCompletionChunk.model_validate(c)
    return out


def test_a_reply_starting_with_an_emoji_gets_the_role_llama_cpp_dropped() -> None:
    # llama.cpp's stream for a reply that begins with a multi-token character: no role chunk
    out = run([chunk({"content": "🚀"}), chunk({"content": " go"}), chunk({}, "stop")])
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": "🚀"}
    assert all("role" not in c["choices"][0]["delta"] for c in out[1:])


def test_a_role_the_upstream_sent_is_kept_and_not_repeated() -> None:
    out = run([chunk({"role": "assistant", "content": None}), chunk({"content": "hi"})])
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "role" not in out[1]["choices"][0]["delta"]


def test_one_id_and_created_for_the_whole_stream() -> None:
    raw = [
        {**chunk({"content": "a"}), "id": "one", "created": 5},
        {**chunk({"content": "b"}), "id": "two", "created": 6},
        {**chunk({}, "stop"), "created": 7},
        {"choices": [], "usage": USAGE},
    ]
    out = run(raw)
    assert {c["id"] for c in out} == {"one"}
    assert {c["created"] for c in out} == {5}


def test_usage_on_content_chunks_goes_out_once_at_the_end() -> None:
    early = {"prompt_tokens": 44, "completion_tokens": 1, "total_tokens": 45}
    raw = [
        chunk({"content": "a"}, usage=early),
        chunk({}, "stop", usage=USAGE),  # vLLM-style usage on every chunk, then on the last
    ]
    out = run(raw)
    assert [c.get("usage") for c in out] == [None, None, USAGE]
    assert out[-1]["choices"] == []


def test_no_usage_chunk_unless_asked() -> None:
    out = run([chunk({"content": "a"}), {"choices": [], "usage": USAGE}], want_usage=False)
    assert len(out) == 1 and "usage" not in out[0]


def test_prompt_tokens_from_llama_cpp_timings_with_the_first_token() -> None:
    conform = StreamConformer("chat", "m", True)
    conform.feed(chunk({"role": "assistant", "content": None}))
    assert conform.prompt_tokens is None
    timings = {"cache_n": 24, "prompt_n": 20, "predicted_n": 1}
    (out,) = conform.feed(chunk({"content": "🚀"}, timings=timings))
    assert conform.prompt_tokens == 44
    assert "timings" not in out


def test_completions_keep_their_shape() -> None:
    conform = StreamConformer("completion", "m", True)
    raw = {"id": "cmpl-1", "choices": [{"index": 0, "text": "x", "finish_reason": None}]}
    (out,) = conform.feed(raw)
    assert out["object"] == "text_completion" and "delta" not in out["choices"][0]
    conform.feed({"choices": [], "usage": USAGE})
    (last,) = conform.finish()
    assert last["id"] == "cmpl-1" and last["usage"] == USAGE
