"""Server-sent events as every dialect frames them: `event: <name>` (optional), `data: <json>`."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"  # OpenAI's end of stream


def event(data: Any, name: str | None = None, *, option: int | None = None) -> bytes:
    """One event: `data` as JSON (orjson `option` flags), after an `event:` line when named."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(data, option=option) + b"\n\n"
