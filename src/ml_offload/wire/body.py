"""Request bodies shared by every dialect: JSON decoding and validation into our error tree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ml_offload.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)

JSON_MEDIA_TYPE = "application/json"
JSON_HEADERS: Mapping[str, str] = {"Content-Type": JSON_MEDIA_TYPE}  # what we send upstream
# on an error response: `upstream` when the model's server said it, not the gateway
ERROR_SOURCE_HEADER = "X-Mlo-Error-Source"


def load_object(raw: bytes | str, what: str = "request body") -> dict[str, Any]:
    """The body (or a WebSocket message: `what`) as a JSON object, or InvalidRequest saying
    what is wrong with it."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
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


def require_object(value: Any, where: str) -> dict[str, Any]:
    """`value`, a JSON object, or InvalidRequest naming the field (`where`)."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: must be an object", param=where)
    return value


def require_str(value: Any, where: str) -> str:
    """`value`, a string, or InvalidRequest naming the field (`where`)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}: must be a string", param=where)
    return value
