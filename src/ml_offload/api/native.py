"""The native API: health, models and their lifecycle, memory status, inference, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from ml_offload.api.deps import json_response as _json
from ml_offload.api.deps import (
    read_body,
    request_context,
    reveals_internals,
    services,
    visible_model,
    visible_models,
)
from ml_offload.api.streaming import EventStreamResponse, until_disconnect
from ml_offload.errors import InvalidRequest, MloError
from ml_offload.inference import EngineStream
from ml_offload.wire import sse
from ml_offload.wire.native import (
    BackendList,
    FleetView,
    HealthView,
    MemoryView,
    ModelList,
    ModelView,
    Rescanned,
    Unloaded,
)
from ml_offload.wire.openai import Kind, error_body

router = APIRouter()


@router.get("/health", response_model=HealthView)
@router.head("/health", include_in_schema=False)  # what load balancers send
async def health(request: Request) -> HealthView:
    return services(request).status.health(reveal=reveals_internals(request))


@router.get("/models", response_model=ModelList)
async def models(request: Request) -> ModelList:
    reveal = reveals_internals(request)
    return services(request).status.models(reveal=reveal, specs=visible_models(request))


@router.post("/models/unload_all", response_model=Unloaded)
async def unload_all(request: Request) -> Unloaded:
    return Unloaded(unloaded=await services(request).control.unload_all())


@router.post("/models/rescan", response_model=Rescanned)
async def rescan(request: Request) -> Rescanned:
    """Read the model folder and config again (admin): new models without a restart."""
    changes = await services(request).control.rescan()
    return Rescanned(
        added=list(changes.added),
        removed=list(changes.removed),
        changed=list(changes.changed),
        models=changes.total,
    )


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: bool | None = None


class PinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pinned: bool


@router.get("/models/{name:path}", response_model=ModelView)
async def model(request: Request, name: str) -> ModelView:
    spec = visible_model(request, name)
    return services(request).status.view_of(spec, reveal=reveals_internals(request))


@router.post("/models/{name:path}/load", response_model=ModelView)
async def load(request: Request, name: str, body: LoadBody | None = None) -> ModelView:
    svc = services(request)
    spec = svc.registry.resolve(name)
    await svc.control.load(spec, pin=body.pin if body else None)
    return svc.status.model(spec.name, reveal=reveals_internals(request))


@router.post("/models/{name:path}/unload", response_model=ModelView)
async def unload(request: Request, name: str) -> ModelView:
    svc = services(request)
    spec = svc.registry.resolve(name)
    await svc.control.unload(spec)
    return svc.status.model(spec.name, reveal=reveals_internals(request))


@router.post("/models/{name:path}/pin", response_model=ModelView)
async def pin(request: Request, name: str, body: PinBody) -> ModelView:
    svc = services(request)
    spec = svc.registry.resolve(name)
    svc.control.pin(spec, body.pinned)
    return svc.status.model(spec.name, reveal=reveals_internals(request))


@router.get("/backends", response_model=BackendList)
async def backends(request: Request) -> BackendList:
    """Every deployment: what serves it, its state and health, and the work on it."""
    reveal = reveals_internals(request)
    return services(request).status.backends(reveal=reveal, specs=visible_models(request))


@router.get("/nodes", response_model=FleetView)
async def nodes(request: Request) -> FleetView:
    """The fleet's nodes from their heartbeats (admin: it names hosts and their models)."""
    return await services(request).fleet.view()


@router.get("/vram/status", response_model=MemoryView)
async def vram_status(request: Request) -> MemoryView:
    return services(request).status.memory(reveal=reveals_internals(request))


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text; the runtime gauges are read at scrape time (metrics.watch)."""
    body = services(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


class InferenceBody(BaseModel):
    """Native inference: a `prompt` (text completion) or `messages` (chat), with parameters."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> InferenceBody:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if not self.messages and self.prompt is None:
            raise ValueError("messages must not be empty")
        return self


@router.post("/inference", response_model=None)
async def inference(request: Request) -> Response:
    try:
        body = InferenceBody.model_validate_json(await read_body(request))
    except ValueError as exc:
        raise InvalidRequest(_first_error(exc)) from None
    svc = services(request)
    kind: Kind = "chat" if body.messages is not None else "completion"
    data: dict[str, Any] = {**body.parameters, "model": body.model, "stream": body.stream}
    if body.stream:
        data["stream_options"] = {"include_usage": True}  # the final event reports usage
    data["messages" if kind == "chat" else "prompt"] = body.messages or body.prompt
    if body.stream:
        opening = svc.inference.open_stream(kind, data, request_context(request))
        stream = await until_disconnect(request, opening)  # gone while queued: nothing sent
        return EventStreamResponse(_native_sse(stream), stream.aclose)
    out = await until_disconnect(
        request, svc.inference.complete(kind, data, request_context(request))
    )
    choice = out["choices"][0]
    text = choice["message"].get("content") if kind == "chat" else choice.get("text")
    return _json(
        {
            "model": body.model,
            "text": text or "",
            "finish_reason": choice.get("finish_reason"),
            "usage": out.get("usage"),
        }
    )


async def _native_sse(stream: EngineStream) -> AsyncIterator[bytes]:
    """Native events: `{"text": delta}` as tokens come, then `{"done": true, ...}`."""
    finish, usage = None, None
    try:
        async for chunk in stream:
            usage = chunk.get("usage") or usage
            for c in chunk.get("choices", []):
                finish = c.get("finish_reason") or finish
                text = (c.get("delta") or {}).get("content") if "delta" in c else c.get("text")
                if text:
                    yield sse.event({"text": text})
    except MloError as exc:
        yield sse.event(error_body(exc))
        return
    yield sse.event({"done": True, "finish_reason": finish, "usage": usage})


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        err = errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        return f"{loc}: {err['msg']}" if loc else str(err["msg"])
    return str(exc)
