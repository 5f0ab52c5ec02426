"""OpenAI-compatible routes: /v1/models, chat and text completions, embeddings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from ml_offload.api.deps import json_response as _json
from ml_offload.api.deps import (
    read_body,
    request_context,
    services,
    visible_model,
    visible_models,
)
from ml_offload.api.streaming import EventStreamResponse, until_disconnect
from ml_offload.domain import is_name_pattern
from ml_offload.errors import MloError
from ml_offload.inference import EngineStream
from ml_offload.wire import anthropic, sse
from ml_offload.wire.openai import Kind, error_body, parse_request

router = APIRouter()

ANTHROPIC_VERSION = "anthropic-version"  # the header Anthropic's clients always send


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    """OpenAI's list, or Anthropic's when the client sends `anthropic-version` (Claude Code)."""
    svc = services(request)
    names = [n for spec in visible_models(request) for n in spec.names if not is_name_pattern(n)]
    if ANTHROPIC_VERSION in request.headers:
        return _json(anthropic.model_list(names, _rfc3339(svc.started_at)))
    created = int(svc.started_at)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "ml-offload"}
        for name in names
    ]
    return _json({"object": "list", "data": data})


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    """One model by name or alias (404 in OpenAI's error shape when unknown)."""
    svc = services(request)
    visible_model(request, model_id)
    if ANTHROPIC_VERSION in request.headers:
        return _json(anthropic.model_object(model_id, _rfc3339(svc.started_at)))
    created = int(svc.started_at)
    return _json({"id": model_id, "object": "model", "created": created, "owned_by": "ml-offload"})


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(int(timestamp), UTC).isoformat().replace("+00:00", "Z")


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    return await _handle(request, "chat")


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Response:
    return await _handle(request, "completion")


@router.post("/v1/embeddings", response_model=None)
async def embeddings(request: Request) -> Response:
    return await _handle(request, "embedding")


async def _handle(request: Request, kind: Kind) -> Response:
    inference = services(request).inference
    req, data = parse_request(kind, await read_body(request))
    ctx = request_context(request)
    if kind != "embedding" and getattr(req, "stream", False):
        stream = await until_disconnect(request, inference.open_stream(kind, data, ctx))
        return EventStreamResponse(openai_sse(stream), stream.aclose)
    return _json(await until_disconnect(request, inference.complete(kind, data, ctx)))


async def openai_sse(stream: EngineStream) -> AsyncIterator[bytes]:
    """OpenAI's framing: `data: {chunk}` events, then `data: [DONE]`; an error as an event."""
    try:
        async for chunk in stream:
            yield sse.event(chunk)
    except MloError as exc:
        yield sse.event(error_body(exc))
        return
    yield sse.DONE
