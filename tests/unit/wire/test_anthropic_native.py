"""The usage read off a passed-through Anthropic event stream, in whatever pieces it comes."""

from __future__ import annotations

import json

from ml_offload.wire.anthropic_native import UsageTap, openai_usage

START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "usage": {"input_tokens": 12, "cache_read_input_tokens": 200, "output_tokens": 1},
    },
}
TRICK = {  # a content delta whose text names the events the tap looks for
    "type": "content_block_delta",
    "index": 0,
    "delta": {"type": "text_delta", "text": '"message_delta" "usage": {"output_tokens": 99}'},
}
DELTA = {
    "type": "message_delta",
    "delta": {"stop_reason": "end_turn"},
    "usage": {"output_tokens": 15},
}


def _frames(*events: dict[str, object]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_usage_from_any_split_of_the_stream() -> None:
    raw = _frames(START, TRICK, DELTA, {"type": "message_stop"})
    for size in (1, 7, 64, len(raw)):
        tap = UsageTap()
        for i in range(0, len(raw), size):
            tap.feed(raw[i : i + size])
        assert tap.usage == {
            "input_tokens": 12,
            "cache_read_input_tokens": 200,
            "output_tokens": 15,
        }


def test_every_prompt_token_is_charged_and_cache_reads_are_cached_tokens() -> None:
    usage = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 200,
        "output_tokens": 15,
    }
    assert openai_usage(usage) == {
        "prompt_tokens": 312,
        "completion_tokens": 15,
        "total_tokens": 327,
        "prompt_tokens_details": {"cached_tokens": 200},
    }
