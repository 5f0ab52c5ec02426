"""OpenAI's Responses API (`/v1/responses`) over the chat path of the inference service, so
every deployment kind answers it; answers with `store` (the default) are kept in the database
for `previous_response_id`, GET and DELETE, seen only by the key that made them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ml_offload.api.deps import json_response, read_body, request_context, services
from ml_offload.api.streaming import SSE_HEADERS, EventStreamResponse, until_disconnect
from ml_offload.domain import RequestContext
from ml_offload.errors import MloError, NotFound
from ml_offload.inference import EngineStream
from ml_offload.storage.responses_repo import StoredResponse
from ml_offload.wire import responses as wire
from ml_offload.wire.responses_stream import ResponseStream

router = APIRouter()

WARNING = "x-mlo-warning"
Save = Callable[[dict[str, Any]], Awaitable[None]]


def _owner(ctx: RequestContext | None) -> str:
    """Whose stored responses these are: the key's id ("" when auth is off)."""
    return ctx.key.id if ctx is not None and ctx.key is not None else ""


@router.post("/v1/responses", response_model=None)
async def create_response(request: Request) -> Response:
    req = wire.parse_request(await read_body(request))
    svc, ctx = services(request), request_context(request)
    owner = _owner(ctx)
    history: list[dict[str, Any]] = []
    if req.previous_response_id:
        previous = await _stored(request, owner, req.previous_response_id, "Previous response")
        history = previous.conversation()
    conversation = [*history, *wire.input_items(req)]
    data = wire.to_chat(req, conversation)
    resp_id, created = wire.new_id("resp_"), wire.now()

    async def save(response: dict[str, Any]) -> None:
        if req.store:
            await svc.responses.save(owner, response, conversation, time.time())

    dropped = wire.dropped_tools(req)
    warning = f"tools left out (the model cannot run them): {', '.join(dropped)}" if dropped else ""
    if not req.stream:
        out = await until_disconnect(request, svc.inference.complete("chat", data, ctx))
        response = wire.from_chat(out, req, resp_id, created)
        await save(response)
        answer = json_response(response)
        if warning:
            answer.headers[WARNING] = warning
        return answer
    data["stream"] = True
    data["stream_options"] = {"include_usage": True}
    stream = await until_disconnect(request, svc.inference.open_stream("chat", data, ctx))
    headers = [*SSE_HEADERS, *([(WARNING.encode(), warning.encode())] if warning else [])]
    events = _sse(stream, ResponseStream(req, resp_id, created), save)
    return EventStreamResponse(events, stream.aclose, headers)


async def _sse(stream: EngineStream, tr: ResponseStream, save: Save) -> AsyncIterator[bytes]:
    """The events; the response is stored before its last event, so a client may continue
    from it (`previous_response_id`) the moment it has read `response.completed`."""
    try:
        for event in tr.start():
            yield wire.sse(event)
        async for chunk in stream:
            for event in tr.feed(chunk):
                yield wire.sse(event)
        *events, last = tr.finish()
        for event in events:
            yield wire.sse(event)
        await save(last["response"])
        yield wire.sse(last)
    except MloError as exc:
        yield wire.sse({**wire.error_event(exc), "sequence_number": tr.next_sequence()})


async def _stored(request: Request, owner: str, response_id: str, what: str) -> StoredResponse:
    found = await services(request).responses.get(owner, response_id, time.time())
    if found is None:
        param = "previous_response_id" if what == "Previous response" else None
        raise NotFound(f"{what} with id '{response_id}' not found.", param=param)
    return found


@router.get("/v1/responses/{response_id}", response_model=None)
async def retrieve_response(request: Request, response_id: str) -> Response:
    stored = await _stored(request, _owner(request_context(request)), response_id, "Response")
    return json_response(stored.response)


@router.delete("/v1/responses/{response_id}", response_model=None)
async def delete_response(request: Request, response_id: str) -> Response:
    owner = _owner(request_context(request))
    if not await services(request).responses.delete(owner, response_id, time.time()):
        raise NotFound(f"Response with id '{response_id}' not found.")
    return json_response({"id": response_id, "object": "response", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items", response_model=None)
async def list_input_items(request: Request, response_id: str) -> Response:
    """The items the model read for this response (earlier turns included), newest first
    unless `order=asc`, as OpenAI lists them."""
    stored = await _stored(request, _owner(request_context(request)), response_id, "Response")
    items = list(stored.items)
    if request.query_params.get("order", "desc") != "asc":
        items.reverse()
    first, last = (items[0].get("id"), items[-1].get("id")) if items else (None, None)
    return json_response(
        {"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": False}
    )
