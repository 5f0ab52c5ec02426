"""Anthropic's Messages API passed through: the usage read off the answer as it goes by.

The body and the event stream go to the caller untouched; only the lines of `message_start`
and `message_delta` events are parsed (https://docs.claude.com/en/api/messages-streaming: the
first carries the prompt's `input_tokens` and cache counts, the second the cumulative
`output_tokens`), so nothing is held back and content deltas cost a substring test.
"""

from __future__ import annotations

from typing import Any

import orjson

CACHE_WRITE = "cache_creation_input_tokens"
CACHE_READ = "cache_read_input_tokens"
_MARKERS = (b'"message_start"', b'"message_delta"')


def openai_usage(u: Any) -> dict[str, Any]:
    """Anthropic usage in OpenAI's shape: every prompt token (fresh, written to and read from
    the cache) is a prompt token; the cache reads are also `cached_tokens`."""
    u = u if isinstance(u, dict) else {}
    read = int(u.get(CACHE_READ) or 0)
    prompt = int(u.get("input_tokens") or 0) + int(u.get(CACHE_WRITE) or 0) + read
    completion = int(u.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
    }


class UsageTap:
    """Fed the stream's bytes in whatever pieces they come; `usage` is Anthropic's, merged
    from message_start and message_delta (later counts win)."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] = {}
        self._tail = b""  # an incomplete last line

    def feed(self, data: bytes) -> None:
        lines = (self._tail + data).split(b"\n") if self._tail else data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith(b"data:") and any(m in line for m in _MARKERS):
                self._take(line[5:])

    def _take(self, payload: bytes) -> None:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start":
            usage = (event.get("message") or {}).get("usage")
        elif event.get("type") == "message_delta":
            usage = event.get("usage")
        else:
            return  # a content delta whose text happens to contain a marker
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if v is not None})
