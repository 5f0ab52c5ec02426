"""Request bodies shared by every dialect: JSON decoding and validation into our error tree."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ml_offload.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def load_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest saying what is wrong with it."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def validate(schema: type[M], data: dict[str, Any]) -> M:
    """`data` as `schema`; the first problem becomes InvalidRequest naming the field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def invalid(exc: ValidationError) -> InvalidRequest:
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    return InvalidRequest(f"{param}: {err['msg']}" if param else err["msg"], param=param)


def parse(schema: type[M], raw: bytes) -> M:
    return validate(schema, load_object(raw))
