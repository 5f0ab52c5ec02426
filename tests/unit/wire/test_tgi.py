"""text-generation-inference: OpenAI completions to /generate and its answers and stream back."""

from __future__ import annotations

import pytest

from ml_offload.errors import InvalidRequest
from ml_offload.wire import tgi


def test_parameters_translated_within_tgis_rules() -> None:
    body = tgi.generate_body(
        {"prompt": ["Once"], "max_tokens": 12, "temperature": 0.5, "top_p": 0.9, "stop": "\n"},
        stream=True,
    )
    assert body == {
        "inputs": "Once",
        "parameters": {
            "details": True,
            "max_new_tokens": 12,
            "temperature": 0.5,
            "do_sample": True,
            "top_p": 0.9,
            "stop": ["\n"],
        },
    }
    greedy = tgi.generate_body({"prompt": "x", "temperature": 0, "top_p": 1.0}, stream=False)
    assert greedy["parameters"] == {
        "details": True,
        "do_sample": False,
        "decoder_input_details": True,
    }


def test_several_prompts_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="one prompt"):
        tgi.generate_body({"prompt": ["a", "b"]}, stream=False)
    with pytest.raises(InvalidRequest):
        tgi.generate_body({"prompt": [1, 2, 3]}, stream=False)


def test_generate_answer_to_a_completion() -> None:
    out = tgi.completion(
        {
            "generated_text": "Paris.",
            "details": {
                "finish_reason": "eos_token",
                "generated_tokens": 3,
                "prefill": [{"id": 1}, {"id": 2}],
            },
        }
    )
    assert out["choices"] == [{"index": 0, "text": "Paris.", "finish_reason": "stop"}]
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert tgi.completion([{"generated_text": "x"}])["choices"][0]["finish_reason"] == "stop"


def test_stream_events_to_chunks() -> None:
    tr = tgi.StreamTranslator()

    def token(text: str, special: bool = False) -> dict[str, object]:
        return {"token": {"id": 1, "text": text, "logprob": -1.0, "special": special}}

    first = tr.feed({**token("Hel"), "generated_text": None, "details": None})
    assert [c["choices"][0]["text"] for c in first] == ["Hel"] and not tr.done
    last = tr.feed(
        {
            **token("</s>", special=True),
            "generated_text": "Hel",
            "details": {"finish_reason": "length", "generated_tokens": 2, "input_length": 4},
        }
    )
    assert tr.done
    assert [c["choices"] for c in last] == [
        [{"index": 0, "text": "", "finish_reason": "length"}],
        [],
    ]
    assert last[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
