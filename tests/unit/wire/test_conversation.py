"""The conversation key: the same from one turn to the next, different across sessions."""

from __future__ import annotations

from ml_offload.wire.conversation import conversation_key

SYSTEM = {"role": "system", "content": "Be brief."}
HI = {"role": "user", "content": "Hi"}


def test_later_turns_keep_the_key() -> None:
    first = conversation_key({"messages": [SYSTEM, HI]})
    later = [
        SYSTEM,
        HI,
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "?"},
    ]
    assert first is not None and conversation_key({"messages": later}) == first


def test_session_opening_and_tools_tell_conversations_apart() -> None:
    base = conversation_key({"messages": [SYSTEM, HI]})
    others = [
        {"messages": [SYSTEM, HI], "user": "alice"},
        {"messages": [SYSTEM, {"role": "user", "content": "Hey"}]},
        {"messages": [HI]},
        {"messages": [SYSTEM, HI], "tools": [{"type": "function", "function": {"name": "f"}}]},
    ]
    keys = {conversation_key(o) for o in others}
    assert base not in keys and len(keys) == len(others)


def test_no_messages_no_key() -> None:
    assert conversation_key({"prompt": "Hi"}) is None
    assert conversation_key({"messages": []}) is None
