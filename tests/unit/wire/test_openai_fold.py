"""Stream chunks folded into the one answer a non-streaming caller gets."""

from ml_offload.wire.openai import normalize_chat
from ml_offload.wire.openai_fold import fold_chat, fold_completion


def _chunk(delta: dict[str, object], finish: str | None = None, **extra: object) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c1", "created": 7, "model": "m", "choices": [choice], **extra}


def test_chat_text_reasoning_tool_calls_and_usage() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_"}}
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"reasoning_content": "think"}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk({"tool_calls": [call]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"name": "time", "arguments": '{"a"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        _chunk({}, "tool_calls"),
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}},
    ]
    out = normalize_chat(fold_chat(chunks), "m")
    assert out["object"] == "chat.completion" and out["id"] == "c1" and out["created"] == 7
    [choice] = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Hello" and message["reasoning_content"] == "think"
    fn = {"name": "get_time", "arguments": '{"a": 1}'}
    assert message["tool_calls"] == [{"id": "call_1", "type": "function", "function": fn}]
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 5}


def test_completion_text_logprobs_and_finish() -> None:
    lp = {"content": [{"token": "a", "logprob": -0.1}]}
    chunks = [
        {"id": "x", "choices": [{"index": 0, "text": "a", "logprobs": lp}]},
        {"id": "x", "choices": [{"index": 0, "text": "b", "logprobs": lp, "finish_reason": "eos"}]},
    ]
    [choice] = fold_completion(chunks)["choices"]
    assert choice["text"] == "ab" and choice["finish_reason"] == "eos"
    assert len(choice["logprobs"]["content"]) == 2


def test_an_empty_stream_is_an_empty_answer() -> None:
    out = normalize_chat(fold_chat([]), "m")
    assert out["choices"] == [] and out["model"] == "m"
