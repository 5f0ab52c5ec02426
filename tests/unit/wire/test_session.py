"""Which conversation a request belongs to (`wire.openai.session_of`), for sticky routing."""

from __future__ import annotations

from ml_offload.wire.anthropic import MessagesRequest, to_openai
from ml_offload.wire.openai import continues, session_of

SYSTEM = {"role": "system", "content": "You are a coding agent."}


def chat(*turns: str) -> dict[str, object]:
    roles = ["user", "assistant"] * len(turns)
    return {"model": "m", "messages": [SYSTEM, *map(_msg, roles, turns)]}


def _msg(role: str, text: str) -> dict[str, str]:
    return {"role": role, "content": text}


def test_the_clients_own_id_first() -> None:
    assert session_of({**chat("hi"), "user": "u"}, "s-1") == "header:s-1"  # x-session-id
    keyed = {**chat("hi"), "prompt_cache_key": "k1", "user": "u"}
    assert session_of(keyed) == "prompt_cache_key:k1"
    assert session_of({**chat("hi"), "user": "u"}) == "user:u"
    assert session_of({**chat("hi"), "user": ""}) == session_of(chat("hi"))


def test_every_turn_of_a_conversation_has_its_first_turns_key() -> None:
    first = session_of(chat("fix the bug in main.py"))
    later = session_of(chat("fix the bug in main.py", "Done.", "now add a test"))
    other = session_of(chat("write a README"))
    assert first is not None and first.startswith("prefix:")
    assert first == later != other


def test_prompts_and_odd_bodies() -> None:
    assert session_of({"prompt": "a" * 600}) == session_of({"prompt": "a" * 512 + "b"})
    assert session_of({"prompt": ""}) is None
    assert session_of({"messages": []}) is None
    assert session_of({"messages": [{"role": "assistant", "content": "x"}]}) is not None


def test_anthropic_metadata_user_id_is_the_user() -> None:
    req = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"user_id": "user_abc_session_1"},
        }
    )
    assert to_openai(req)["user"] == "user_abc_session_1"
    assert session_of(to_openai(req)) == "user:user_abc_session_1"


def test_a_later_turn_continues() -> None:
    assert not continues(chat("hi"))
    assert continues(chat("hi", "hello", "more"))
    assert not continues({"prompt": "x"})
