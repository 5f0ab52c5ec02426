"""The native API: health, models and their lifecycle, memory status, inference, metrics."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from ml_offload import __version__
from ml_offload.api.deps import native_json as _json
from ml_offload.api.deps import read_body, request_context, services
from ml_offload.api.streaming import EventStreamResponse, until_disconnect
from ml_offload.domain import DeploymentKind, ModelSpec, ModelStatus
from ml_offload.errors import InvalidRequest, MloError
from ml_offload.inference import EngineStream
from ml_offload.placement import Estimate
from ml_offload.services import Services, host_memory_bytes
from ml_offload.storage.disk import disk_space
from ml_offload.wire import sse
from ml_offload.wire.openai import Kind, error_body

router = APIRouter()


@router.get("/health")
@router.head("/health", include_in_schema=False)  # what load balancers send
async def health(request: Request) -> Response:
    svc = services(request)
    loaded = svc.scheduler.loaded()
    return _json(
        {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - svc.started_at, 3),
            "models": {
                "known": len(svc.registry.all()),
                "loaded": sum(s.state == "ready" for s in loaded),
            },
            "disk": _disk(svc),
        }
    )


def _disk(svc: Services) -> dict[str, Any]:
    """Free space where models and the registry live; `low` below storage.low_disk_bytes."""
    storage = svc.settings.storage
    space = disk_space(storage.data_dir, storage.low_disk_bytes)
    return {
        "path": str(storage.data_dir),
        "free_bytes": space.free_bytes,
        "total_bytes": space.total_bytes,
        "low": space.low,
    }


@router.get("/models")
async def models(request: Request) -> Response:
    svc = services(request)
    specs = svc.registry.all()
    data = [
        _model_json(svc, sp, st) for sp, st in zip(specs, svc.scheduler.status(specs), strict=True)
    ]
    return _json({"object": "list", "data": data})


@router.post("/models/unload_all")
async def unload_all(request: Request) -> Response:
    return _json({"unloaded": await services(request).scheduler.unload_all()})


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: bool | None = None


class PinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pinned: bool


@router.get("/models/{name:path}")
async def model(request: Request, name: str) -> Response:
    return _json(_one(services(request), name))


@router.post("/models/{name:path}/load")
async def load(request: Request, name: str, body: LoadBody | None = None) -> Response:
    svc = services(request)
    spec = svc.registry.resolve(name)
    await svc.scheduler.load(spec, pin=body.pin if body else None)
    return _json(_one(svc, spec.name))


@router.post("/models/{name:path}/unload")
async def unload(request: Request, name: str) -> Response:
    svc = services(request)
    spec = svc.registry.resolve(name)
    await svc.scheduler.unload(spec.name)
    return _json(_one(svc, spec.name))


@router.post("/models/{name:path}/pin")
async def pin(request: Request, name: str, body: PinBody) -> Response:
    svc = services(request)
    spec = svc.registry.resolve(name)
    svc.scheduler.set_pinned(spec, body.pinned)
    return _json(_one(svc, spec.name))


@router.get("/backends")
async def backends(request: Request) -> Response:
    """Every deployment: what serves it, its state and health, and the work on it."""
    svc = services(request)
    specs = svc.registry.all()
    data = []
    for spec, st in zip(specs, svc.scheduler.status(specs), strict=True):
        health = svc.router.health(spec.name)
        cooling = svc.router.cooling_s(spec.name)
        data.append(
            {
                "model": spec.name,
                "kind": "llama.cpp" if spec.kind is DeploymentKind.LLAMACPP else spec.backend,
                "target": spec.url or (str(spec.path) if spec.path else st.base_url),
                "state": st.state,
                "healthy": cooling == 0 and st.state != "failed",
                "cooling_s": round(cooling, 3),
                "failures": health.failures,
                "last_error": health.last_error or st.last_error,
                "in_flight": st.in_flight,
                "queued": st.queued,
                "fallbacks": list(spec.fallbacks),
                **_probe_json(svc, spec.name),
            }
        )
    return _json({"object": "list", "data": data})


def _probe_json(svc: Services, name: str) -> dict[str, Any]:
    """What the background probe last saw (vLLM's load, TGI's model id), when it probes."""
    probe = svc.probes.get(name)
    if probe is None:
        return {}
    load = probe.load
    unhealthy = {} if probe.ok else {"healthy": False}  # unreachable or broken: not healthy
    return {
        **unhealthy,
        "probe": {
            "ok": probe.ok,
            "age_s": round(svc.probes.age_s(probe), 3),
            "error": probe.error,
            "model_id": probe.model_id,
            **(
                {}
                if probe.loaded is None
                else {"loaded": probe.loaded, "vram_bytes": probe.vram_bytes}
            ),
            "load": None
            if load is None
            else {
                "running": load.running,
                "waiting": load.waiting,
                "kv_cache_usage": load.kv_cache_usage,
            },
        },
    }


@router.get("/vram/status")
async def vram_status(request: Request) -> Response:
    svc = services(request)
    sched = svc.scheduler
    loaded = [st for st in sched.loaded() if st.layers is not None]
    devices = []
    for d in sched.monitor.devices():
        on_it = {st.name: st.device_bytes[d.index] for st in loaded if d.index in st.device_bytes}
        devices.append({**asdict(d), "models": on_it})
    return _json(
        {
            "monitor": sched.monitor.name,
            "reserve_bytes": sched.reserve_bytes,
            "devices": devices,
            "cpu": {
                "total_bytes": host_memory_bytes(),
                "cores": os.cpu_count(),
                "budget_bytes": sched.budget_bytes,
                "used_estimate_bytes": sum(st.host_bytes or 0 for st in loaded),
            },
            "models": [
                {
                    "name": st.name,
                    "state": st.state,
                    "estimate_bytes": st.estimate_bytes,
                    "measured_bytes": st.measured_bytes,
                    "gpu_layers": st.gpu_layers,
                    "layers": st.layers,
                    "device_bytes": st.device_bytes,
                    "host_bytes": st.host_bytes,
                }
                for st in loaded
            ],
        }
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    svc = services(request)
    m = svc.metrics
    statuses = svc.scheduler.loaded()
    m.loaded.set(sum(s.state == "ready" and s.layers is not None for s in statuses))
    m.observe_devices(svc.scheduler.monitor.devices())
    for s in statuses:
        m.queue_depth.labels(s.name).set(s.queued)
        m.in_flight.labels(s.name).set(s.in_flight)
    storage = svc.settings.storage
    for folder, path in (("data", storage.data_dir), ("models", storage.models_path)):
        space = disk_space(path, storage.low_disk_bytes)
        m.observe_disk(folder, space.free_bytes, space.total_bytes, space.low)
    return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


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
        stream = await svc.inference.open_stream(kind, data, request_context(request))
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


def _one(svc: Services, name: str) -> dict[str, Any]:
    spec = svc.registry.resolve(name)
    return _model_json(svc, spec, svc.scheduler.status([spec])[0])


def _estimate_json(est: Estimate | None) -> dict[str, int] | None:
    if est is None:
        return None
    return {
        "layers": est.layers,
        "gpu_full_bytes": sum(est.layer_bytes) + est.output_bytes + est.gpu_compute_bytes,
        "gpu_compute_bytes": est.gpu_compute_bytes,
        "cpu_only_bytes": est.cpu_total_bytes(),
    }


def _model_json(svc: Services, spec: ModelSpec, status: ModelStatus) -> dict[str, Any]:
    return {
        "id": spec.name,
        "aliases": list(spec.aliases),
        "source": spec.source,
        "path": str(spec.path) if spec.path else None,
        "url": spec.url,
        "ctx_size": spec.ctx_size,
        "parallel": spec.parallel,
        "ttl_s": spec.ttl_s,
        "info": asdict(spec.info) if spec.info else None,
        "estimate": _estimate_json(svc.scheduler.estimate(spec)),
        **{k: v for k, v in asdict(status).items() if k not in ("name", "base_url")},
        "base_url": status.base_url if spec.is_local else None,
    }


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        err = errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        return f"{loc}: {err['msg']}" if loc else str(err["msg"])
    return str(exc)
