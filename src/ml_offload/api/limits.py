"""`GET /limits`: the caller's rate limits and what is left of them this minute, read from the
live limiter (admin keys may ask about any key with `?key=<id or name>`)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from ml_offload.api.deps import request_context, services
from ml_offload.wire.native import LimitsView

router = APIRouter()


@router.get("/limits", response_model=LimitsView)
async def limits(
    request: Request,
    key: str | None = Query(None, min_length=1, description="a key's id or name (admin keys)"),
) -> LimitsView:
    return await services(request).guard.limits(request_context(request), key)
