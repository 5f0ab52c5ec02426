"""The conversation key (`wire.openai.conversation_key`): the same from one turn to the next,
different across sessions and across one session's conversations."""

from __future__ import annotations

from ml_offload.wire.openai import conversation_key

SYSTEM = {"role": "system", "content": "Be brief."}
HI = {"role": "user", "content": "Hi"}


def test_later_turns_keep_the_key() -> None:
    first = conversation_key({"messages": [SYSTEM, HI], "user": "u"})
    answer = {"role": "assistant", "content": "Hello"}
    later = [SYSTEM, HI, answer, {"role": "user", "content": "?"}]
    assert first is not None and conversation_key({"messages": later, "user": "u"}) == first


def test_sessions_and_openings_tell_conversations_apart() -> None:
    base = conversation_key({"messages": [SYSTEM, HI]})
    others = [
        ({"messages": [SYSTEM, HI], "user": "alice"}, None),
        ({"messages": [SYSTEM, HI], "user": "alice"}, "s-1"),  # x-session-id
        ({"messages": [SYSTEM, HI], "prompt_cache_key": "k"}, None),
        ({"messages": [SYSTEM, {"role": "user", "content": "Hey"}], "user": "alice"}, None),
        ({"messages": [HI]}, None),
    ]
    keys = {conversation_key(data, header) for data, header in others}
    assert base not in keys and len(keys) == len(others)


def test_no_beginning_no_key() -> None:
    assert conversation_key({"messages": []}) is None
    assert conversation_key({"model": "m"}, "s-1") is None
