"""OpenAI stream chunks folded back into one answer (what a non-streaming caller gets).

The gateway asks llama.cpp engines for a stream even when the caller wants one body: the
engine stops generating the moment a stream's connection closes, but finishes a non-streaming
request whose client left. Chunks arrive already normalised (`openai.normalize_chunk` /
`normalize_completion`); this folds their deltas: text, reasoning, tool calls by index, logprobs.
"""

from __future__ import annotations

from typing import Any


def fold_chat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One `chat.completion` from `chat.completion.chunk`s."""
    out: dict[str, Any] = {"object": "chat.completion", "choices": []}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        _envelope(out, chunk)
        for c in chunk.get("choices") or []:
            choice = choices.setdefault(
                int(c.get("index") or 0),
                {"message": {"role": "assistant", "content": None}, "logprobs": None},
            )
            _delta(choice["message"], c.get("delta") or {})
            _logprobs(choice, c.get("logprobs"))
            if c.get("finish_reason"):
                choice["finish_reason"] = c["finish_reason"]
    out["choices"] = [{"index": i, "finish_reason": "stop", **choices[i]} for i in sorted(choices)]
    return out


def fold_completion(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One `text_completion` from its streamed pieces."""
    out: dict[str, Any] = {"object": "text_completion", "choices": []}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        _envelope(out, chunk)
        for c in chunk.get("choices") or []:
            choice = choices.setdefault(
                int(c.get("index") or 0), {"text": "", "logprobs": None, "finish_reason": None}
            )
            choice["text"] += c.get("text") or ""
            _logprobs(choice, c.get("logprobs"))
            if c.get("finish_reason"):
                choice["finish_reason"] = c["finish_reason"]
    out["choices"] = [{"index": i, **choices[i]} for i in sorted(choices)]
    return out


def _envelope(out: dict[str, Any], chunk: dict[str, Any]) -> None:
    for key in ("id", "created", "model", "system_fingerprint"):
        if key in chunk and key not in out:
            out[key] = chunk[key]
    if chunk.get("usage"):
        out["usage"] = chunk["usage"]


def _delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    for key in ("content", "reasoning_content", "refusal"):
        piece = delta.get(key)
        if isinstance(piece, str):
            message[key] = (message.get(key) or "") + piece
    for call in delta.get("tool_calls") or []:
        _tool_call(message.setdefault("tool_calls", []), call)


def _tool_call(calls: list[dict[str, Any]], piece: dict[str, Any]) -> None:
    index = int(piece.get("index") or 0)
    while len(calls) <= index:
        calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[index]
    if piece.get("id"):
        call["id"] = piece["id"]
    fn = piece.get("function") or {}
    call["function"]["name"] += fn.get("name") or ""
    call["function"]["arguments"] += fn.get("arguments") or ""


def _logprobs(choice: dict[str, Any], logprobs: Any) -> None:
    if not isinstance(logprobs, dict):
        return
    held = choice["logprobs"] = choice["logprobs"] or {}
    for key, value in logprobs.items():
        if isinstance(value, list):
            held.setdefault(key, []).extend(value)
        else:
            held[key] = value


FOLDS = {"chat": fold_chat, "completion": fold_completion}
