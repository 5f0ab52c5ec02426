"""OpenAI streams made conformant, chunk by chunk, whatever the upstream sent.

Followed: https://platform.openai.com/docs/api-reference/chat-streaming (the chunk object: one
`id` and `created` for every chunk of a completion, `delta.role` on the first delta, and with
`stream_options.include_usage` one last chunk whose `choices` is empty and which carries
`usage`). Engines deviate: llama.cpp sends no role chunk when the reply starts with a character
that spans several tokens (an emoji: it holds the bytes back and then sends content only), some
servers put `usage` on the last content chunk or on every chunk. This is the one place each
chunk is fixed, without holding any content back: only the usage is kept until the end.

The prompt's token count is learned as early as the upstream says it (`usage.prompt_tokens` on
any chunk, or llama.cpp's per-token `timings`: `cache_n + prompt_n`), for dialects that announce
it before the content (Anthropic's `message_start`).
"""

from __future__ import annotations

from typing import Any

from ml_offload.wire.openai import STREAM_NORMALIZERS, Kind


def _prompt_tokens(obj: dict[str, Any]) -> int | None:
    usage = obj.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        return int(usage["prompt_tokens"])
    timings = obj.get("timings")
    if isinstance(timings, dict) and isinstance(timings.get("prompt_n"), int):
        return int(timings["prompt_n"]) + int(timings.get("cache_n") or 0)
    return None


class StreamConformer:
    """Raw upstream chunks in (`feed`), conformant chunks out; `finish()` gives the usage
    chunk (when the caller asked for one) once the upstream stream has ended."""

    def __init__(self, kind: Kind, model: str, want_usage: bool) -> None:
        self._normalize = STREAM_NORMALIZERS[kind]
        self._chat = kind == "chat"
        self._model, self._want_usage = model, want_usage
        self._id: str | None = None
        self._created: int | None = None
        self._roled: set[int] = set()  # choice indexes whose role was sent
        self.usage: dict[str, Any] | None = None
        self.prompt_tokens: int | None = None

    def feed(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        if self.prompt_tokens is None:
            self.prompt_tokens = _prompt_tokens(obj)
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        if not obj.get("choices"):
            return []  # a usage-only chunk (or an empty one): the usage goes out last
        out = self._normalize({k: v for k, v in obj.items() if k != "usage"}, self._model)
        self._same_envelope(out)
        if self._chat:
            self._role(out["choices"])
        return [out]

    def finish(self) -> list[dict[str, Any]]:
        if not (self._want_usage and self.usage is not None):
            return []
        out = self._normalize({"choices": [], "usage": self.usage}, self._model)
        self._same_envelope(out)
        return [out]

    def _same_envelope(self, out: dict[str, Any]) -> None:
        if self._id is None:
            self._id, self._created = out["id"], out["created"]
        out["id"], out["created"] = self._id, self._created

    def _role(self, choices: list[dict[str, Any]]) -> None:
        for choice in choices:
            n = int(choice.get("index") or 0)
            if n in self._roled:
                continue
            self._roled.add(n)
            delta = choice.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            if "role" not in delta:
                choice["delta"] = {"role": "assistant", **delta}
