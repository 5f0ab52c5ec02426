"""Stop sequences matched in the gateway, on streamed text, so the caller learns which one hit.

Engines drop the stop string and report only `finish_reason: "stop"`, the same as an end of
turn; Anthropic's API must say which sequence stopped the text. Text that may be the start of
a stop sequence is held back until the next piece decides it.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str] | None) -> None:
        self._stops = [s for s in stops or () if s]
        self._held = ""

    def __bool__(self) -> bool:
        return bool(self._stops)

    def feed(self, text: str) -> tuple[str, str | None]:
        """The text safe to emit now, and the stop sequence if one was reached."""
        if not self._stops:
            return text, None
        buf = self._held + text
        hit: tuple[int, str] | None = None
        for stop in self._stops:
            at = buf.find(stop)
            if at >= 0 and (hit is None or at < hit[0]):
                hit = (at, stop)
        if hit is not None:
            self._held = ""
            return buf[: hit[0]], hit[1]
        keep = max((_overlap(buf, stop) for stop in self._stops), default=0)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    def flush(self) -> str:
        """Text still held back when the stream ends without a stop sequence."""
        held, self._held = self._held, ""
        return held


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that begins `stop` (shorter than `stop`)."""
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0
