"""A conversation's KV cache kept across a model swap (llama.cpp slot save and restore): the
real gateway and the real SmolLM2 engine, the model unloaded through the gateway's API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import MODEL, Gateway, GatewayFactory

pytestmark = pytest.mark.integration

OPENING = [
    {"role": "system", "content": "You are a terse assistant. Answer in one short sentence."},
    {
        "role": "user",
        "content": "The harbour town had three bakeries, two bridges and one lighthouse "
        "painted red and white. Ships came in every morning with fish and salt. "
        "What colour was the lighthouse?",
    },
]


def ask(gw: Gateway, messages: list[dict[str, Any]]) -> tuple[str, int, int]:
    """The answer at temperature 0, its prompt's tokens and how many the engine had cached."""
    chat = gw.client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=8,
        temperature=0,
        user="alice",  # type: ignore[arg-type]
    )
    usage = chat.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens or 0
    return str(chat.choices[0].message.content), usage.prompt_tokens, cached


def unload(gw: Gateway) -> None:
    assert gw.http.post(f"/models/{MODEL}/unload").status_code == 200
    assert gw.model()["state"] == "stopped"


def test_returning_conversation_is_restored_from_its_saved_slot(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gw = gateway_factory()
    saved = tmp_path / "gw0" / "data" / "slots" / MODEL
    first, first_prompt, _ = ask(gw, OPENING)
    second_turn = [*OPENING, {"role": "assistant", "content": first}]
    second_turn.append({"role": "user", "content": "And the bridges: how many?"})

    unload(gw)  # the conversation's slot is saved before the engine stops
    assert len(list(saved.glob("*.bin"))) == 1
    restored, prompt, cached = ask(gw, second_turn)  # loaded again, the slot restored first
    assert prompt > first_prompt and cached >= first_prompt - 1  # the opening not re-processed

    unload(gw)
    for path in saved.glob("*.bin"):
        path.unlink()  # the same conversation again on a fresh engine, without a swap:
    assert ask(gw, OPENING)[0] == first
    kept, prompt_again, cached_again = ask(gw, second_turn)
    assert (prompt_again, cached_again) == (prompt, cached)
    assert restored == kept  # the same answer at temperature 0, with or without the swap


def test_off_saves_nothing(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    gw = gateway_factory(engine={"slot_save": False})
    first, _, _ = ask(gw, OPENING)
    unload(gw)
    assert not list((tmp_path / "gw0" / "data").glob("slots/*/*.bin"))
    second_turn = [*OPENING, {"role": "assistant", "content": first}]
    second_turn.append({"role": "user", "content": "And the bridges: how many?"})
    assert ask(gw, second_turn)[2] == 0
