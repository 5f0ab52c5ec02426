"""Which conversation a chat request continues: a key that stays the same from one turn to the
next, so an engine can keep (or restore) the turn's KV cache for the turn after it.

The key is a hash of the session (`user`; Anthropic's `metadata.user_id` arrives as it) and of the
prompt's opening: the tools and the messages up to and including the first user message, which
every later turn repeats. Two sessions with the same opening are two conversations; one session
with two openings too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def conversation_key(data: dict[str, Any]) -> str | None:
    """The key of the conversation that chat request `data` continues; None without messages."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    opening = _opening(messages)
    session = data.get("user") if isinstance(data.get("user"), str) else None
    raw = orjson.dumps([session, data.get("tools"), opening], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _opening(messages: list[Any]) -> list[Any]:
    """The messages up to and including the first user message (all of them without one)."""
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return messages[: i + 1]
    return messages
