"""Errors rendered in the caller's dialect, chosen by path.

`/v1/messages` gets Anthropic's shape, `/api/` Ollama's, everything else OpenAI's. An error
that came from the engine is marked `X-Mlo-Error-Source: upstream`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ml_offload.errors import InvalidRequest, MloError, NotFound, RouteRefused
from ml_offload.wire import anthropic, openai
from ml_offload.wire import ollama as ollama_wire
from ml_offload.wire.body import ERROR_SOURCE_HEADER, JSON_MEDIA_TYPE

log = logging.getLogger(__name__)

Renderer = Callable[[MloError], dict[str, Any]]


def _anthropic(exc: MloError) -> dict[str, Any]:
    return {**anthropic.error_body(exc), "request_id": "req_" + os.urandom(12).hex()}


def renderer(path: str) -> Renderer:
    if path.startswith("/v1/messages"):
        return _anthropic
    if path.startswith("/api/"):
        return ollama_wire.error_body
    return openai.error_body


def error_response(exc: MloError, path: str = "") -> Response:
    headers = dict(exc.headers)
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if exc.upstream:
        headers[ERROR_SOURCE_HEADER] = "upstream"
    return Response(
        orjson.dumps(renderer(path)(exc)),
        status_code=exc.status,
        media_type=JSON_MEDIA_TYPE,
        headers=headers,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(MloError)
    async def _ours(request: Request, exc: MloError) -> Response:
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = f"{param}: {err['msg']}" if param else str(err["msg"])
        return error_response(InvalidRequest(msg, param=param), request.url.path)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        path = request.url.path
        if exc.status_code == 404:
            return error_response(NotFound(f"no route {request.method} {path}"), path)
        return error_response(RouteRefused(str(exc.detail), status=exc.status_code), path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(MloError("internal error; see the gateway log"), request.url.path)
