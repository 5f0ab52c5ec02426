"""The WebSocket inference protocol (`/ws/inference`), as pure messages.

Client → server: `{"id", "model", "messages" | "prompt", "parameters"}` starts a request,
`{"id", "cancel": true}` cancels one. Server → client: `{"id", "delta"}` per piece of text,
then `{"id", "done": true, "finish_reason", "usage"}`; `{"id", "cancelled": true}` after a
cancel; `{"id", "error": {"message", "type", "code", "status"}}` on failure. Several requests
may run at once on one connection; `id` tells their messages apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ml_offload.errors import InvalidRequest, MloError
from ml_offload.wire.body import validate

RequestId = str | int


class Start(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: RequestId
    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = Field(None, min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_input(self) -> Start:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class Cancel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: RequestId
    cancel: Literal[True]


def parse(data: Any) -> Start | Cancel:
    if not isinstance(data, dict):
        raise InvalidRequest("a message must be a JSON object")
    if "id" not in data:
        raise InvalidRequest("id: every message needs an id", param="id")
    if "cancel" in data:
        return validate(Cancel, data)
    return validate(Start, data)


def to_openai(start: Start) -> tuple[Literal["chat", "completion"], dict[str, Any]]:
    data: dict[str, Any] = {**start.parameters, "model": start.model, "stream": True}
    data["stream_options"] = {"include_usage": True}
    if start.messages is not None:
        data["messages"] = start.messages
        return "chat", data
    data["prompt"] = start.prompt
    return "completion", data


def text_of(chunk: dict[str, Any]) -> tuple[str, str | None]:
    """The text in one OpenAI chunk (chat or completion) and its finish reason, if any."""
    text, finish = "", None
    for choice in chunk.get("choices") or []:
        piece = (choice.get("delta") or {}).get("content") if "delta" in choice else None
        text += piece or choice.get("text") or ""
        finish = choice.get("finish_reason") or finish
    return text, finish


def error(request_id: RequestId | None, exc: MloError) -> dict[str, Any]:
    body = {"message": exc.message, "type": exc.error_type, "code": exc.code, "status": exc.status}
    return {"id": request_id, "error": body}
