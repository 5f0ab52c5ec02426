"""The one object the request path talks to for security.

Order per request: `authenticate` (key, certificate binding, admin paths, requests per minute)
at arrival, `admit` (model scope, tokens reserved from the prompt and max_tokens) once the model
is known, `outbound` (redaction) for each deployment tried, `finish` (tokens settled from real
usage, audit event) when the response, or the stream, ends.

The key is checked against the database on every request (one primary-key lookup), so a key
revoked through any gateway, or `mlo keys revoke`, is refused by every gateway at once.
"""

from __future__ import annotations

import hmac
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ml_offload.config import SecuritySettings
from ml_offload.domain import ModelSpec, RequestContext
from ml_offload.errors import AuthError, MloError, PermissionDenied, RateLimited
from ml_offload.security.audit import AuditLog
from ml_offload.security.keys import KeyStore, bearer_token, in_scope
from ml_offload.security.limits import Charge, Limiter, Window, reset_text
from ml_offload.security.redact import Redactor
from ml_offload.storage.db import Database
from ml_offload.storage.keys_repo import KeyRepository

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Native and Ollama endpoints that change what is loaded or stored: admin only (reads are not).
_MUTATING_PREFIXES = (
    "/models/",
    "/pull",
    "/storage",
    "/api/pull",
    "/api/delete",
    "/api/create",
    "/api/copy",
    "/api/push",
)
_RECHECK_S = 1.0  # auth = auto with no key yet: how often to look whether one was created
_CHARS_PER_TOKEN = 4  # the prompt's share of a reservation, before the real count is known


def is_admin_path(method: str, path: str) -> bool:
    if path == "/admin" or path.startswith("/admin/"):
        return True
    return method not in _READS and path.startswith(_MUTATING_PREFIXES)


class Guard:
    def __init__(
        self,
        settings: SecuritySettings,
        resolve: Callable[[str], ModelSpec],
        db: Database | None = None,
        audit_file: Path | None = None,
    ) -> None:
        """`audit_file`: where the audit log goes (`audit.audit_path(settings)`); needed when
        the audit log is on and `settings.audit.path` is not set."""
        self._settings = settings
        self._resolve = resolve  # a model name or alias to its spec (scopes by provider)
        self.keys: KeyStore | None = KeyStore(KeyRepository(db)) if db is not None else None
        admin = settings.admin_key.get_secret_value() if settings.admin_key else ""
        self._admin_key = admin.encode() if admin else None
        self._public = frozenset(settings.public_paths)
        self._keys_exist = False
        self._checked_at = -math.inf
        self._limits = settings.limits
        self._limiter = Limiter(settings.limits.storage_url)
        self._audit: AuditLog | None = None
        audit = settings.audit
        if audit.enabled:
            where = audit.path or audit_file
            if where is None:
                raise ValueError("the audit log is on but has no file: pass audit_file")
            self._audit = AuditLog(audit, where)
        red = settings.redaction
        self._redactor = Redactor(red) if (red.secrets or red.emails or red.phones) else None

    @property
    def auth_on(self) -> bool:
        """Whether requests need a key: `required`, an admin key set, or (`auto`) a key exists."""
        mode = self._settings.auth
        if mode == "off":
            return False
        return mode == "required" or self._admin_key is not None or self._keys_exist

    def key_created(self) -> None:
        """A key was just created here: auth is on from now (`auto`)."""
        self._keys_exist = True

    async def start(self) -> None:
        """Open the limiter storage and the audit log; learn whether keys exist."""
        await self._limiter.start()
        if self._audit is not None:
            await self._audit.start()
        await self._refresh_keys_exist()

    async def close(self) -> None:
        """Flush the audit log and close storages."""
        if self._audit is not None:
            await self._audit.close()
        await self._limiter.close()
        if self.keys is not None:
            await self.keys.close()

    # -- arrival ---------------------------------------------------------------------------

    async def authenticate(
        self,
        headers: Mapping[str, str],
        *,
        method: str,
        path: str,
        client: str | None,
        cert_subject: str | None,
    ) -> RequestContext:
        """Who is asking. Raises AuthError (401), PermissionDenied (403) or RateLimited (429)."""
        ctx = RequestContext(
            request_id=os.urandom(12).hex(),
            method=method,
            path=path,
            client=client,
            cert_subject=cert_subject,
            started=time.perf_counter(),
            time=time.time(),
        )
        if path in self._public:
            ctx.extra["public"] = True
            return ctx
        try:
            await self._identify(ctx, bearer_token(headers))
            await self._charge_request(ctx, self._subject(ctx))
        except MloError as exc:
            ctx.status = exc.status
            ctx.extra["error"] = exc.code
            self._record(ctx)
            raise
        return ctx

    async def _identify(self, ctx: RequestContext, token: str | None) -> None:
        if not await self._auth_needed(token is not None):
            return
        if token is None:
            raise AuthError(
                "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>` "
                "(create one with `mlo keys create`)"
            )
        if self._admin_key is not None and hmac.compare_digest(token.encode(), self._admin_key):
            ctx.admin = True
            return
        if self.keys is None:
            raise AuthError("invalid API key")
        key = await self.keys.verify(token, ctx.time)
        if key.cert_subject is not None and key.cert_subject != ctx.cert_subject:
            raise AuthError(
                f"API key {key.id} ({key.name}) is bound to the client certificate "
                f"{key.cert_subject!r}; connect with that certificate (mutual TLS)"
            )
        ctx.key, ctx.admin = key, key.admin
        if not key.admin and is_admin_path(ctx.method, ctx.path):
            raise PermissionDenied(
                f"{ctx.method} {ctx.path} needs an admin key; key {key.id} ({key.name}) is not one"
            )

    async def _auth_needed(self, has_token: bool) -> bool:
        if self.auth_on or self._settings.auth == "off":
            return self.auth_on
        # auto, and no key known yet: one may have been created since (CLI, another gateway).
        if has_token or time.monotonic() - self._checked_at > _RECHECK_S:
            await self._refresh_keys_exist()
        return self._keys_exist

    async def _refresh_keys_exist(self) -> None:
        self._checked_at = time.monotonic()
        if self.keys is not None and not self._keys_exist:
            self._keys_exist = await self.keys.any_exist()

    def derive(self, parent: RequestContext) -> RequestContext:
        """A context for one request inside a connection (each WebSocket message), with the
        connection's identity; `admit` and `finish` apply to it like to an HTTP request (its
        request per minute is charged in `admit`)."""
        return RequestContext(
            request_id=os.urandom(12).hex(),
            method="WS",
            path=parent.path,
            client=parent.client,
            cert_subject=parent.cert_subject,
            key=parent.key,
            admin=parent.admin,
            started=time.perf_counter(),
            time=time.time(),
            extra={"rpm_due": True},
        )

    # -- limits ----------------------------------------------------------------------------

    def _subject(self, ctx: RequestContext) -> _Subject | None:
        """Whose per-key limits apply: the key's (its own, else the defaults), the client
        address's when auth is off; none for the admin key."""
        lim = self._limits
        if ctx.key is not None:
            who = f"key {ctx.key.id} ({ctx.key.name})"
            rpm, tpm = ctx.key.rpm or lim.default_rpm, ctx.key.tpm or lim.default_tpm
            return _Subject(f"key:{ctx.key.id}", who, rpm, tpm)
        if ctx.admin or (lim.default_rpm is None and lim.default_tpm is None):
            return None
        host = (ctx.client or "").rpartition(":")[0] or ctx.client or "unknown"
        return _Subject(f"client:{host}", f"client {host}", lim.default_rpm, lim.default_tpm)

    def _model_subject(self, name: str) -> _Subject:
        lim = self._limits
        return _Subject(
            f"model:{name}", f"model {name!r}", lim.model_rpm.get(name), lim.model_tpm.get(name)
        )

    async def _charge_request(self, ctx: RequestContext, subject: _Subject | None) -> None:
        """One request against the subject's requests per minute."""
        if subject is None or subject.rpm is None:
            return
        window, charge = await self._limiter.charge(subject.scope, subject.rpm, 1)
        _windows(ctx)["requests"] = window
        if charge is None:
            raise _refusal(ctx, subject.who, window, f"{subject.rpm} requests per minute")

    async def _reserve_tokens(self, ctx: RequestContext, subject: _Subject, cost: int) -> None:
        tpm = subject.tpm
        assert tpm is not None
        if cost > tpm:
            raise RateLimited(
                f"this request may use {cost} tokens (prompt and max_tokens), more than "
                f"{subject.who}'s limit of {tpm} tokens per minute; lower max_tokens",
                headers=_headers({"tokens": await self._limiter.peek(subject.scope, tpm)}),
            )
        window, charge = await self._limiter.charge(subject.scope, tpm, cost)
        _windows(ctx)["tokens"] = window
        if charge is None:
            raise _refusal(ctx, subject.who, window, f"{tpm} tokens per minute")
        _charges(ctx).append(charge)

    def response_headers(self, ctx: RequestContext) -> list[tuple[bytes, bytes]]:
        """`x-ratelimit-*` for a response that was let through (empty with no limits)."""
        if not ctx.extra.get("windows"):
            return []
        return [(k.encode(), v.encode()) for k, v in _headers(_windows(ctx)).items()]

    # -- the model is known ----------------------------------------------------------------

    async def admit(self, ctx: RequestContext, kind: str, data: Mapping[str, Any]) -> None:
        """May this request use `data["model"]`, and are there tokens left for it?"""
        model = str(data.get("model"))
        ctx.model = model
        if ctx.extra.pop("rpm_due", False):  # a message on a long connection
            if ctx.key is not None and self.keys is not None:
                ctx.key = await self.keys.recheck(ctx.key, time.time())  # revoked since?
            await self._charge_request(ctx, self._subject(ctx))
        if self._audit is not None:  # hashed by the audit writer, off the request's path
            ctx.prompt = data.get("messages") if kind == "chat" else data.get("prompt")
            if ctx.prompt is None:
                ctx.prompt = data.get("input")
        spec = self._spec_if_needed(ctx, model)
        self._check_scope(ctx, model, spec)
        await self._admit_limits(ctx, kind, data, spec)

    def authorize(self, ctx: RequestContext | None, model: str, *, admin: bool = False) -> None:
        """For actions on a model other than inference (Ollama's load and unload idiom): the
        key's scope, and an admin key where `admin` (unloading affects everyone)."""
        if ctx is None or not self.auth_on:
            return
        ctx.model = model
        if admin and not ctx.admin:
            raise PermissionDenied(f"unloading {model!r} needs an admin key")
        if ctx.key is not None and ctx.key.models:
            self._check_scope(ctx, model, self._resolve(model))

    def _check_scope(self, ctx: RequestContext, model: str, spec: ModelSpec | None) -> None:
        key = ctx.key
        if key is not None and key.models and spec and not in_scope(key.models, model, spec):
            raise PermissionDenied(
                f"key {key.id} ({key.name}) may not use model {model!r}; it may use "
                f"{', '.join(key.models)}"
            )

    def _spec_if_needed(self, ctx: RequestContext, model: str) -> ModelSpec | None:
        lim = self._limits
        if (ctx.key is not None and ctx.key.models) or lim.model_rpm or lim.model_tpm:
            return self._resolve(model)
        return None

    async def _admit_limits(
        self, ctx: RequestContext, kind: str, data: Mapping[str, Any], spec: ModelSpec | None
    ) -> None:
        subjects = [self._subject(ctx)]
        if spec is not None:
            model = self._model_subject(spec.name)
            await self._charge_request(ctx, model)
            subjects.append(model)
        limited = [s for s in subjects if s is not None and s.tpm is not None]
        if not limited:
            return
        cost = _estimate_tokens(kind, data, self._limits.default_max_tokens)
        try:
            for subject in limited:
                await self._reserve_tokens(ctx, subject, cost)
        except MloError:
            await self._settle(ctx, 0)  # give back what another limit took
            raise
        ctx.reserved_tokens = cost

    # -- leaving and ending ----------------------------------------------------------------

    def outbound(
        self, spec: ModelSpec, data: dict[str, Any], ctx: RequestContext | None
    ) -> dict[str, Any]:
        """The request as it may leave for `spec` (secrets masked for cloud providers)."""
        if not spec.redact or self._redactor is None:
            return data
        masked, count = self._redactor.redact_request(data)
        if ctx is not None:
            ctx.redactions += count
        return masked

    async def finish(self, ctx: RequestContext) -> None:
        """Settle reserved tokens with the real usage and write the audit event (once)."""
        if ctx.settled:
            return
        ctx.settled = True
        if ctx.extra.get("charges"):
            await self._settle(ctx, _actual_tokens(ctx))
        if not ctx.extra.get("public"):
            self._record(ctx)

    async def _settle(self, ctx: RequestContext, actual: int) -> None:
        for charge in cast(list[Charge], ctx.extra.pop("charges", [])):
            await self._limiter.settle(charge, actual)

    def _record(self, ctx: RequestContext) -> None:
        if self._audit is not None:
            self._audit.record(audit_event(ctx))


def audit_event(ctx: RequestContext) -> dict[str, Any]:
    """What the audit log keeps about one request (the prompt's text only when asked to)."""
    event: dict[str, Any] = {
        "time": ctx.time,  # unix seconds; the writer stores it as ISO 8601
        "request_id": ctx.request_id,
        "key_id": ctx.key.id if ctx.key else None,
        "key_name": ctx.key.name if ctx.key else ("admin" if ctx.admin else None),
        "client": ctx.client,
        "cert_subject": ctx.cert_subject,
        "method": ctx.method,
        "path": ctx.path,
        "model": ctx.model,
        "backend": ctx.backend,
        "prompt_tokens": ctx.prompt_tokens,
        "completion_tokens": ctx.completion_tokens,
        "status": ctx.status,
        "latency_ms": round((time.perf_counter() - ctx.started) * 1000, 3),
        "redactions": ctx.redactions,
    }
    if ctx.prompt is not None:
        event["prompt"] = ctx.prompt  # the writer hashes it, keeps it only with log_prompts
    if ctx.extra.get("error"):
        event["error"] = ctx.extra["error"]
    return event


@dataclass(frozen=True, slots=True)
class _Subject:
    """What a limit is kept for (a key, a client address, a model), and its limits."""

    scope: str
    who: str
    rpm: int | None
    tpm: int | None


def _windows(ctx: RequestContext) -> dict[str, Window]:
    return cast(dict[str, Window], ctx.extra.setdefault("windows", {}))


def _charges(ctx: RequestContext) -> list[Charge]:
    return cast(list[Charge], ctx.extra.setdefault("charges", []))


def _refusal(ctx: RequestContext, who: str, window: Window, limit: str) -> RateLimited:
    return RateLimited(
        f"{who} is over its limit of {limit}; retry after {reset_text(window.reset_s)}",
        retry_after_s=window.reset_s,
        headers=_headers(_windows(ctx)),
    )


def _headers(windows: Mapping[str, Window]) -> dict[str, str]:
    """OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`."""
    out: dict[str, str] = {}
    for what, w in windows.items():
        out[f"x-ratelimit-limit-{what}"] = str(w.limit)
        out[f"x-ratelimit-remaining-{what}"] = str(w.remaining)
        out[f"x-ratelimit-reset-{what}"] = reset_text(w.reset_s)
    return out


def _estimate_tokens(kind: str, data: Mapping[str, Any], default_max_tokens: int) -> int:
    """Prompt (about 4 characters a token, images not counted) plus the most it may write."""
    chars = _text_chars(data.get("messages") if kind == "chat" else data.get("prompt"))
    chars += _text_chars(data.get("input"))
    prompt = math.ceil(chars / _CHARS_PER_TOKEN)
    if kind == "embedding":
        return max(1, prompt)
    most = data.get("max_completion_tokens") or data.get("max_tokens")
    if not isinstance(most, int) or isinstance(most, bool):
        most = default_max_tokens  # absent, or not a number (the engine will refuse it)
    return prompt + max(1, most)


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        if value.get("type") in ("image_url", "input_audio", "image"):
            return 0
        return sum(_text_chars(value.get(k)) for k in ("content", "text", "arguments"))
    return 0


def _actual_tokens(ctx: RequestContext) -> int:
    """What the request really used; all of the reservation when the engine reported nothing
    for an answer that went out, none for one that failed."""
    used = ctx.prompt_tokens + ctx.completion_tokens
    if used:
        return used
    failed = ctx.status >= 400 and ctx.status != 499
    return 0 if failed else ctx.reserved_tokens
