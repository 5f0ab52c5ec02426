"""Hugging Face text-generation-inference (TGI): OpenAI text completions ⇄ `/generate`.

Chat goes through TGI's Messages API (`/v1/chat/completions`, OpenAI's shape) untouched; text
completions are translated here. Followed: TGI's OpenAPI spec and docs ("Consuming TGI",
"Messages API"): `/generate` takes `{"inputs", "parameters": {"max_new_tokens", "temperature"
(> 0), "top_p" (0 < p < 1), "stop", "details", "decoder_input_details", "seed"}}` and answers
`{"generated_text", "details": {"finish_reason": "length"|"eos_token"|"stop_sequence",
"generated_tokens", "prefill", ...}}`; `/generate_stream` sends SSE events
`{"index", "token": {"id", "text", "logprob", "special"}, "generated_text", "details"}` where the
last carries `generated_text` and `details` (`finish_reason`, `generated_tokens`, `input_length`
in newer versions); errors are `{"error": "...", "error_type": "..."}`.
"""

from __future__ import annotations

import time
from typing import Any

from ml_offload.errors import InvalidRequest

FINISH_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}


def generate_body(data: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    """The `/generate` (or `/generate_stream`) body for an OpenAI completion request."""
    params: dict[str, Any] = {"details": True}
    max_tokens = data.get("max_tokens") or data.get("max_completion_tokens")
    if max_tokens:
        params["max_new_tokens"] = int(max_tokens)
    temperature = data.get("temperature")
    if temperature is not None:  # TGI refuses 0: greedy is "no sampling"
        if temperature > 0:
            params["temperature"] = temperature
            params["do_sample"] = True
        else:
            params["do_sample"] = False
    top_p = data.get("top_p")
    if top_p is not None and 0 < top_p < 1:  # TGI refuses 1.0 (which means "off")
        params["top_p"] = top_p
    stop = data.get("stop")
    if stop:
        params["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if data.get("seed") is not None:
        params["seed"] = data["seed"]
    if not stream:
        params["decoder_input_details"] = True  # the prompt's tokens: usage.prompt_tokens
    return {"inputs": _prompt(data.get("prompt")), "parameters": params}


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest(
            "text-generation-inference takes one prompt string per request", param="prompt"
        )
    return prompt


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(resp: Any) -> dict[str, Any]:
    """An OpenAI text completion from a `/generate` answer."""
    if isinstance(resp, list):  # TGI answers a list when given a list of inputs
        resp = resp[0] if resp else {}
    details = resp.get("details") or {}
    prompt_tokens = len(details.get("prefill") or ()) or int(details.get("input_length") or 0)
    return {
        "id": f"cmpl-{time.time_ns():x}",
        "created": int(time.time()),
        "choices": [
            {
                "index": 0,
                "text": resp.get("generated_text") or "",
                "finish_reason": FINISH_REASONS.get(str(details.get("finish_reason")), "stop"),
            }
        ],
        "usage": _usage(prompt_tokens, int(details.get("generated_tokens") or 0)),
    }


class StreamTranslator:
    """`/generate_stream` events in, OpenAI completion chunks out; `done` after the last."""

    def __init__(self) -> None:
        self.id = f"cmpl-{time.time_ns():x}"
        self.created = int(time.time())
        self.done = False

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        token = event.get("token") or {}
        text = "" if token.get("special") else str(token.get("text") or "")
        details = event.get("details")
        out = []
        if text or details is None:
            out.append(self._chunk(text, None))
        if details is not None:
            self.done = True
            reason = FINISH_REASONS.get(str(details.get("finish_reason")), "stop")
            out.append(self._chunk("", reason))
            usage = _usage(
                int(details.get("input_length") or 0), int(details.get("generated_tokens") or 0)
            )
            out.append({"id": self.id, "created": self.created, "choices": [], "usage": usage})
        return out

    def _chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "finish_reason": finish}
        return {"id": self.id, "created": self.created, "choices": [choice]}
