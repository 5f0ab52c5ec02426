"""Key administration over HTTP (`/admin/keys`): create, list, revoke.

Only admin keys (or the admin key from the environment) get here: the security guard refuses
every other key with 403 before the route runs. `mlo keys` does the same on the database.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from ml_offload.api.deps import json_response, read_body, services
from ml_offload.domain import ApiKey
from ml_offload.errors import InvalidRequest, Unavailable
from ml_offload.security.keys import MAX_LIMIT, KeyStore, parse_expiry

router = APIRouter(prefix="/admin")


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    models: list[str] = Field(default_factory=list, description="names, aliases, `backend:*`")
    admin: bool = False
    rpm: int | None = Field(None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(None, ge=1, le=MAX_LIMIT)
    expires: str | None = Field(None, description="30d, 12h, or an ISO date")
    cert_subject: str | None = None


def key_json(key: ApiKey) -> dict[str, Any]:
    return {**asdict(key), "models": list(key.models)}


def _store(request: Request) -> KeyStore:
    store = services(request).guard.keys
    if store is None:
        raise Unavailable("keys need the database; check storage.database_url")
    return store


@router.post("/keys")
async def create_key(request: Request) -> Response:
    try:
        body = CreateKey.model_validate_json(await read_body(request))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise InvalidRequest(f"{where}: {err['msg']}", param=where) from None
    guard = services(request).guard
    created = await _store(request).create(
        body.name,
        models=body.models,
        admin=body.admin,
        rpm=body.rpm,
        tpm=body.tpm,
        expires_at=parse_expiry(body.expires) if body.expires else None,
        cert_subject=body.cert_subject,
    )
    guard.key_created()
    return json_response({**key_json(created.key), "key": created.secret}, status=201)


@router.get("/keys")
async def list_keys(request: Request) -> Response:
    keys = await _store(request).list()
    return json_response({"object": "list", "data": [key_json(k) for k in keys]})


@router.delete("/keys/{id_or_name}")
async def revoke_key(request: Request, id_or_name: str) -> Response:
    return json_response(key_json(await _store(request).revoke(id_or_name)))
