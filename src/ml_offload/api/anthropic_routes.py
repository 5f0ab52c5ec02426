"""Anthropic's Messages API (`POST /v1/messages`) over the inference service.

The `x-api-key` and `anthropic-version` headers the official clients send are accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ml_offload.api.deps import json_response, read_body, request_context, services
from ml_offload.api.streaming import SSE_HEADERS, EventStreamResponse, until_disconnect
from ml_offload.errors import MloError
from ml_offload.inference import EngineStream
from ml_offload.wire import anthropic as wire
from ml_offload.wire.body import JSON_MEDIA_TYPE, load_object

router = APIRouter()


@router.post("/v1/messages", response_model=None)
async def messages(request: Request) -> Response:
    raw = await read_body(request)
    req = wire.parse_request(raw)
    if services(request).inference.passes_through(req.model):
        return await _passthrough(request, req, load_object(raw))
    data = wire.to_openai(req)
    warning = _dropped(wire.server_tools(req))
    inference = services(request).inference
    ctx = request_context(request)
    if not req.stream and not req.stop_sequences:
        out = await until_disconnect(request, inference.complete("chat", data, ctx))
        return _warned(json_response(wire.from_openai(out, req.model)), warning)
    data["stream"] = True
    data["stream_options"] = {"include_usage": True}
    stream = await until_disconnect(request, inference.open_stream("chat", data, ctx))
    translator = wire.StreamTranslator(req.model, req.stop_sequences)
    if req.stream:
        headers = [*SSE_HEADERS, *([(WARNING, warning.encode())] if warning else [])]
        return EventStreamResponse(_sse(stream, translator), stream.aclose, headers)
    try:  # stop sequences are matched here, on the stream, even when the caller wants one body
        events = await until_disconnect(request, _collect(stream, translator))
    finally:
        await stream.aclose()
    return _warned(json_response(wire.fold(events)), warning)


async def _passthrough(request: Request, req: wire.MessagesRequest, native: Any) -> Response:
    """To a deployment that speaks Messages itself: the body and the answer untranslated."""
    inference = services(request).inference
    work = inference.anthropic_messages(
        wire.limits_view(req), native, request.headers, request_context(request)
    )
    answer = await until_disconnect(request, work)
    if isinstance(answer, bytes):
        return Response(answer, media_type=JSON_MEDIA_TYPE)
    return EventStreamResponse(aiter(answer), answer.aclose)


WARNING = b"x-mlo-warning"


def _dropped(tools: list[str]) -> str | None:
    if not tools:
        return None
    return f"Anthropic server tools left out (the model cannot run them): {', '.join(tools)}"


def _warned(response: Response, warning: str | None) -> Response:
    if warning:
        response.headers[WARNING.decode()] = warning
    return response


async def _events(stream: EngineStream, tr: wire.StreamTranslator) -> AsyncIterator[wire.Event]:
    async for chunk in stream:
        for event in tr.feed(chunk, stream.prompt_tokens):
            yield event
        if tr.stopped:
            break  # a stop sequence: closing the stream stops the engine
    for event in tr.finish():
        yield event


async def _sse(stream: EngineStream, tr: wire.StreamTranslator) -> AsyncIterator[bytes]:
    try:
        async for event in _events(stream, tr):
            yield wire.sse(event)
    except MloError as exc:
        yield wire.sse(wire.error_body(exc))


async def _collect(stream: EngineStream, tr: wire.StreamTranslator) -> list[dict[str, Any]]:
    return [event async for event in _events(stream, tr)]


@router.post("/v1/messages/count_tokens", response_model=None)
async def count_tokens(request: Request) -> Response:
    """The prompt's tokens as the model counts them (its template and tokenizer)."""
    req, native = wire.parse_count_request(await read_body(request))
    inference = services(request).inference
    native_model = inference.passes_through(req.model)  # then `native` goes, untranslated
    chat = wire.limits_view(req) if native_model else wire.to_openai(req)
    work = inference.count_tokens(chat, native, request_context(request))
    return json_response({"input_tokens": await until_disconnect(request, work)})
