"""Errors are rendered in the caller's dialect, chosen by path, with the error's status."""

from __future__ import annotations

import json

import pytest
from anthropic.types.shared import ErrorResponse

from ml_offload.api.errors import error_response
from ml_offload.errors import EngineError, InvalidRequest, MloError, OverCapacity, Unavailable


@pytest.mark.parametrize(
    "exc",
    [
        InvalidRequest("bad"),
        OverCapacity("busy", retry_after_s=2),
        Unavailable("full"),
        EngineError("x"),
    ],
)
def test_each_dialect_keeps_the_status(exc: MloError) -> None:
    for path in ("/v1/messages", "/api/chat", "/v1/chat/completions"):
        assert error_response(exc, path).status_code == exc.status


def test_shapes_by_path() -> None:
    exc = OverCapacity("busy", retry_after_s=2)
    anthropic = error_response(exc, "/v1/messages")
    body = json.loads(anthropic.body)
    ErrorResponse.model_validate(body)
    assert body["error"] == {"type": "rate_limit_error", "message": "busy"}
    assert body["request_id"].startswith("req_") and anthropic.headers["retry-after"] == "2"
    assert json.loads(error_response(exc, "/api/generate").body) == {"error": "busy"}
    openai = json.loads(error_response(exc, "/v1/chat/completions").body)
    assert (
        openai["error"]["type"] == "rate_limit_error" and openai["error"]["code"] == "over_capacity"
    )
    assert json.loads(error_response(exc, "/inference").body) == openai
