"""`POST /analyze`: the code analyzer for platform services (issue 17).

It reads a folder on the gateway's own disk, so it needs an admin key, or a key whose scope
lists `tool:analyze` (and, for the model's explanations, the model too), whenever auth is on.
The LLM pass goes through the in-process inference service: routing, limits and audit apply.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from ml_offload.analyzer import Analysis, Options, Summaries, analyze
from ml_offload.analyzer.discover import DEFAULT_MAX_FILE_BYTES, parse_languages
from ml_offload.analyzer.output import MEDIA_TYPES, render
from ml_offload.analyzer.summarize import Ask, Budget, summarize
from ml_offload.api.deps import read_body, request_context, services
from ml_offload.domain import RequestContext
from ml_offload.errors import InvalidRequest, PermissionDenied
from ml_offload.services import Services

router = APIRouter()
ANALYZE_SCOPE = "tool:analyze"


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="a folder on the gateway's disk")
    languages: list[str] | None = None
    format: Literal["json", "markdown", "html"] = "json"
    llm: bool = Field(True, description="explain with a model when one is served")
    model: str | None = Field(None, description="default: the first model the gateway serves")
    changed_since: str | None = None
    max_file_bytes: int = Field(DEFAULT_MAX_FILE_BYTES, ge=1)
    max_llm_files: int = Field(Budget.max_files, ge=1, le=1000)


@router.post("/analyze")
async def analyze_codebase(request: Request) -> Response:
    body = _parse(await read_body(request))
    svc = services(request)
    ctx = request_context(request)
    authorize(svc, ctx)
    options = Options(
        languages=tuple(parse_languages(",".join(body.languages or []))),
        max_file_bytes=body.max_file_bytes,
        changed_since=body.changed_since,
    )
    analysis = await asyncio.to_thread(analyze, Path(body.path), options)
    if body.llm:
        analysis.summaries = await _explain(svc, ctx, analysis, body)
    data = await asyncio.to_thread(render, analysis, body.format)
    return Response(data, media_type=MEDIA_TYPES[body.format])


def authorize(svc: Services, ctx: RequestContext | None) -> None:
    if ctx is None or not svc.guard.auth_on or ctx.admin:
        return
    if ctx.key is not None and ANALYZE_SCOPE in ctx.key.models:
        return
    who = f"key {ctx.key.id} ({ctx.key.name})" if ctx.key is not None else "this request"
    raise PermissionDenied(
        f"POST /analyze reads the gateway's disk: it needs an admin key or a key with the "
        f"{ANALYZE_SCOPE!r} scope; {who} has neither"
    )


def _parse(raw: bytes) -> AnalyzeRequest:
    try:
        return AnalyzeRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise InvalidRequest(f"{where}: {err['msg']}", param=where) from None


async def _explain(
    svc: Services, ctx: RequestContext | None, analysis: Analysis, body: AnalyzeRequest
) -> Summaries | None:
    specs = svc.registry.all()
    if body.model is None and not specs:
        return None  # nothing to explain with: structure only
    spec = svc.registry.resolve(body.model) if body.model else specs[0]
    budget = Budget(context_tokens=spec.ctx_size, max_files=body.max_llm_files)
    cache = svc.settings.storage.data_dir / "analyzer"
    return await summarize(analysis, _inference_ask(svc, ctx, spec.name), spec.name, budget, cache)


def _inference_ask(svc: Services, parent: RequestContext | None, model: str) -> Ask:
    """Each call is its own request to the guard (scope, limits, audit), as a WebSocket
    message is."""

    async def ask(system: str, user: str, max_tokens: int) -> str:
        data = {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": max_tokens,
            "temperature": 0.2,
        }
        ctx = None if parent is None else svc.guard.derive(parent)
        if ctx is not None:
            ctx.method = "POST"
        try:
            answer = await svc.inference.complete("chat", data, ctx)
        finally:
            if ctx is not None:
                await svc.guard.finish(ctx)
        return str(answer["choices"][0]["message"].get("content") or "")

    return ask
