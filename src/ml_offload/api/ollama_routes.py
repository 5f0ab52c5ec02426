"""Ollama's API under `/api/` over the inference service and the scheduler.

Generation always streams from the engine (NDJSON to the caller by default); `"stream": false`
folds the stream into one object, the way Ollama itself does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from starlette.responses import Response

from ml_offload.api.deps import (
    json_response,
    read_body,
    request_context,
    services,
    visible_models,
)
from ml_offload.api.streaming import EventStreamResponse, until_disconnect
from ml_offload.domain import ModelSpec
from ml_offload.errors import InvalidRequest, MloError, ModelNotFound
from ml_offload.inference import EngineStream
from ml_offload.registry import offers_tools
from ml_offload.services import Services
from ml_offload.wire import ollama as wire
from ml_offload.wire.body import JSON_MEDIA_TYPE, load_object

router = APIRouter(prefix="/api")
NDJSON_HEADERS = [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-cache")]


def _resolve(svc: Services, name: str) -> ModelSpec:
    for candidate in wire.model_names(name):
        try:
            return svc.registry.resolve(candidate)
        except ModelNotFound:
            continue
    return svc.registry.resolve(name)  # raises, naming what exists


@router.post("/chat", response_model=None)
async def chat(request: Request) -> Response:
    started = time.perf_counter_ns()
    req = wire.parse_chat(await read_body(request))
    svc = services(request)
    spec = _resolve(svc, req.model)
    if not req.messages:
        return await _load_or_unload(request, spec, req.model, req.keep_alive, "chat")
    data = wire.chat_to_openai(req)
    data["model"] = spec.name
    return await _generate(
        request, svc, "chat", data, wire.StreamTranslator("chat", req.model, started), req.stream
    )


@router.post("/generate", response_model=None)
async def generate(request: Request) -> Response:
    started = time.perf_counter_ns()
    req = wire.parse_generate(await read_body(request))
    svc = services(request)
    spec = _resolve(svc, req.model)
    if not req.prompt and not req.images:
        return await _load_or_unload(request, spec, req.model, req.keep_alive, "generate")
    kind, data = wire.generate_to_openai(req)
    data["model"] = spec.name
    tr = wire.StreamTranslator("generate", req.model, started)
    return await _generate(request, svc, kind, data, tr, req.stream)


async def _generate(
    request: Request,
    svc: Services,
    kind: Literal["chat", "completion"],
    data: dict[str, Any],
    tr: wire.StreamTranslator,
    stream_out: bool,
) -> Response:
    data["stream"] = True
    data["stream_options"] = {"include_usage": True}
    opening = svc.inference.open_stream(kind, data, request_context(request))
    stream = await until_disconnect(request, opening)  # a client gone while queued: nothing sent
    tr.opened()
    if stream_out:
        return EventStreamResponse(_ndjson(stream, tr), stream.aclose, NDJSON_HEADERS)
    try:
        objects = await until_disconnect(request, _collect(stream, tr))
    finally:
        await stream.aclose()
    return json_response(wire.fold(objects))


async def _objects(
    stream: EngineStream, tr: wire.StreamTranslator
) -> AsyncIterator[dict[str, Any]]:
    async for chunk in stream:
        for obj in tr.feed(chunk):
            yield obj
    for obj in tr.finish():
        yield obj


async def _ndjson(stream: EngineStream, tr: wire.StreamTranslator) -> AsyncIterator[bytes]:
    try:
        async for obj in _objects(stream, tr):
            yield wire.ndjson(obj)
    except MloError as exc:
        yield wire.ndjson(wire.error_body(exc))


async def _collect(stream: EngineStream, tr: wire.StreamTranslator) -> list[dict[str, Any]]:
    return [obj async for obj in _objects(stream, tr)]


async def _load_or_unload(
    request: Request, spec: ModelSpec, model: str, keep_alive: float | str | None, kind: str
) -> Response:
    """An empty prompt loads the model; with `keep_alive: 0` it unloads it (Ollama's idiom).
    Loading needs the model in the key's scope; unloading, an admin key."""
    svc = services(request)
    unload = wire.is_unload(keep_alive)
    svc.guard.authorize(request_context(request), spec.name, admin=unload)
    if unload:
        await svc.control.unload_if_loaded(spec)
        return json_response(wire.load_response(model, "unload", kind))
    await svc.control.load(spec)
    return json_response(wire.load_response(model, "load", kind))


@router.post("/embed", response_model=None)
async def embed(request: Request) -> Response:
    started = time.perf_counter_ns()
    req = wire.parse_embed(await read_body(request))
    svc = services(request)
    spec = _resolve(svc, req.model)
    data = {"model": spec.name, "input": req.input}
    out = await until_disconnect(
        request, svc.inference.complete("embedding", data, request_context(request))
    )
    return json_response(wire.embed(out, req.model, time.perf_counter_ns() - started))


@router.post("/embeddings", response_model=None)
async def embeddings(request: Request) -> Response:
    req = wire.parse_embeddings(await read_body(request))
    svc = services(request)
    spec = _resolve(svc, req.model)
    data = {"model": spec.name, "input": req.prompt}
    out = await until_disconnect(
        request, svc.inference.complete("embedding", data, request_context(request))
    )
    return json_response({"embedding": out["data"][0]["embedding"]})


@router.post("/pull", response_model=None)
async def pull(request: Request) -> Response:
    """Passed through to the external Ollama (its NDJSON progress streamed back as it comes)."""
    body = _pull_body(await read_body(request))
    svc = services(request)
    name = str(body.pop("name", None) or body.get("model"))
    try:
        spec: ModelSpec | None = _resolve(svc, name)
    except ModelNotFound:
        spec = None
    answer = await svc.control.pull(name, spec, body)
    if isinstance(answer, bytes):
        return Response(answer, media_type=JSON_MEDIA_TYPE)
    return EventStreamResponse(answer.lines(), answer.aclose, NDJSON_HEADERS)


def _pull_body(raw: bytes) -> dict[str, Any]:
    body = load_object(raw)
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("model: the name of the model to pull is required", param="model")
    return body


@router.get("/tags")
async def tags(request: Request) -> Response:
    svc = services(request)
    return json_response(wire.tags(visible_models(request), svc.started_at))


@router.get("/ps")
async def ps(request: Request) -> Response:
    svc = services(request)
    specs = {spec.name: spec for spec in visible_models(request)}
    loaded = [
        (specs[s.name], s)
        for s in svc.scheduler.loaded()
        if s.name in specs and s.state == "ready" and specs[s.name].is_local
    ]
    return json_response(wire.ps(loaded))


@router.post("/show")
async def show(request: Request) -> Response:
    svc = services(request)
    req = wire.parse_show(await read_body(request))
    spec = _resolve(svc, req.model)
    return json_response(wire.show(spec, svc.started_at, tools=offers_tools(spec)))


@router.delete("/delete")
async def delete(request: Request) -> Response:
    """Ollama's delete, for model files in the gateway's folder: 200 with no body; 404 if the
    model does not exist (admin keys only, as every path that changes what is stored)."""
    svc = services(request)
    req = wire.parse_show(await read_body(request))  # the same body: `model` (or `name`)
    await svc.control.delete(_resolve(svc, req.model))
    return Response(status_code=200)


@router.post("/copy")
async def copy(request: Request) -> Response:
    """Ollama's copy, as an alias of the source model (kept until the gateway restarts)."""
    svc = services(request)
    req = wire.parse_copy(await read_body(request))
    await svc.control.copy(_resolve(svc, req.source), req.destination)
    return Response(status_code=200)


@router.get("/version")
async def version() -> Response:
    return json_response({"version": wire.API_VERSION})
