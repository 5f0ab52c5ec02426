"""The one error tree. Each error knows its HTTP status and its OpenAI error type.

Foreign errors (aiohttp, OS, SQLAlchemy) are translated into these where they enter.
Messages say what went wrong and how to fix it.
"""

from __future__ import annotations

import re


class MloError(Exception):
    """Base of every error ml-offload raises on purpose."""

    status: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after_s: float | None = None,
        upstream: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        self.upstream = upstream
        self.headers = headers or {}  # extra response headers (x-ratelimit-*)


class ConfigError(MloError):
    """Settings are invalid; the message names the key."""

    status = 500
    code = "config_error"


class InvalidRequest(MloError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    """The request body is over `server.max_body_bytes`."""

    status = 413
    code = "payload_too_large"


class RouteRefused(InvalidRequest):
    """The HTTP framework refused the request before a route ran (e.g. 405, a method the path
    does not take); the status is the framework's."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class InvalidModelFile(InvalidRequest):
    """A model file is not GGUF, is truncated, or misses a shard; the message names the file."""

    status = 422
    code = "invalid_model_file"


class AuthError(MloError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(MloError):
    """The key is valid but may not do this (a model outside its scope, an admin endpoint)."""

    status = 403
    error_type = "permission_error"
    code = "permission_denied"


class RateLimited(MloError):
    """The key (or model) is over its requests or tokens per minute; retry after `retry_after_s`."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ModelNotFound(MloError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFound(MloError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class OverCapacity(MloError):
    """Too many requests queued for a model: try again after `retry_after_s`."""

    status = 429
    error_type = "rate_limit_error"
    code = "over_capacity"


class Unavailable(MloError):
    """No room to load the model now (all loaded models busy or pinned) or load timed out."""

    status = 503
    error_type = "server_error"
    code = "unavailable"


class EngineError(MloError):
    """The inference engine failed (crashed, refused, or answered 5xx)."""

    status = 502
    error_type = "server_error"
    code = "engine_error"


class EngineUnreachable(EngineError):
    """The engine refused the connection: nothing was sent, so the request can be retried."""

    code = "engine_unreachable"


class UpstreamClientError(MloError):
    """The engine rejected the request as the client's mistake (4xx); status is the engine's."""

    error_type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, *, status: int, param: str | None = None) -> None:
        super().__init__(message, param=param, upstream=True)
        self.status = status


class EngineTimeout(EngineError):
    status = 504
    code = "engine_timeout"


class AnalysisError(InvalidRequest):
    """The code analyzer cannot start: the path is not a folder, an unknown language, a bad
    revision. Single files that cannot be analysed are reported and skipped, not raised."""

    code = "analysis_error"


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s'\"]*)@")


def safe_url(text: object) -> str:
    """`text` with the userinfo of every URL in it masked (`redis://***@host:6379`): what the
    gateway prints wherever a URL (a database, Redis, an upstream) could carry a credential."""
    return _USERINFO.sub(r"\g<scheme>***@", str(text))
