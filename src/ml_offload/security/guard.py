"""Security as one step: the one object the request path talks to, and where each decision lives.

Per request, in order:

- **authenticated** at arrival (`authenticate`): a public path passes; otherwise the bearer key
  is checked against the database (one primary-key lookup, so a key revoked anywhere is refused
  everywhere at once) or against the admin key, its client-certificate binding is checked, and a
  non-admin key is refused admin paths (`is_admin_path`). The caller's requests per minute are
  charged (`quota.Quota.charge_caller`).
- **admitted** once the model is known (`admit`): the key's model scope (`keys.in_scope`, names,
  aliases, `provider:*`), then the tokens reserved from the caller's limit for the prompt and
  max_tokens (`quota.Quota.admit`). `authorize` is the same scope check for actions other than
  inference (Ollama's load and unload).
- **let through to each deployment tried** (`enter`), the model asked for and then its
  fallbacks: the key's scope for that deployment itself (a key for `mine` is never answered by
  `mine`'s fallback `theirs`, a `local:*` key never by a cloud provider), and that deployment's
  own per-model limits (`quota.Quota.admit_deployment`), refunded (`give_back`) when it fails and
  the next is tried. A deployment refused is skipped; `none_left` says why in the error when no
  deployment answers. The audit event names the deployment that answered (`ctx.backend`).
- **redacted** for each deployment tried (`outbound`): secrets masked (`redact.Redactor`) when
  the deployment's `redact` is set (the registry sets it for deployments whose prompts leave
  the machine, unless the config says otherwise).
- **finished** when the response, or the stream, ends (`finish`): tokens settled from the real
  usage, and the audit event written (`audit.AuditLog`, batched off the request's path).

Every refusal (401, 403, 429, 503 from the limit storage) is counted in `/metrics`
(`mlo_guard_refusals_total`) and audited. The rules here are also the ones `mlo security-audit`
(posture.py) reports from: `auth_on`, `insecure_bind`, `is_live`, the audit file, `redact`.
The guard builds none of its parts: `services.build_guard` chooses them from settings.
"""

from __future__ import annotations

import hmac
import math
import os
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from pydantic import SecretStr

from ml_offload.config import SecuritySettings, Settings
from ml_offload.domain import (
    SESSION_HEADER,
    ApiKey,
    Charge,
    ModelSpec,
    RequestContext,
    is_loopback_host,
)
from ml_offload.errors import (
    AuthError,
    MloError,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unavailable,
)
from ml_offload.metrics import Metrics
from ml_offload.security.audit import AuditLog
from ml_offload.security.keys import KeyStore, bearer_token, in_scope
from ml_offload.security.quota import Quota
from ml_offload.security.redact import Redactor
from ml_offload.wire.native import LimitsView

INTERNAL_HEADER = "x-mlo-internal"  # `Guard.internal_token`: a call from this process to itself

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
# Who a request sent by a fleet gateway with `fleet.node_key` is: any model, no admin paths.
FLEET_GATEWAY = ApiKey(id="fleet", name="fleet gateway (fleet.node_key)")
_RECHECK_S = 1.0  # auth = auto with no key yet: how often to look whether one was created


def is_admin_path(method: str, path: str) -> bool:
    if path == "/admin" or path.startswith("/admin/") or path == "/nodes":  # /nodes names hosts
        return True
    return method not in _READS and path.startswith(_MUTATING_PREFIXES)


def auth_on(settings: SecuritySettings, keys_exist: bool) -> bool:
    """Whether requests need a key: `required`, an admin key set, or (`auto`) a key exists."""
    fixed = _auth_fixed(settings)
    return keys_exist if fixed is None else fixed


def _auth_fixed(settings: SecuritySettings) -> bool | None:
    """Auth as the settings alone decide it; None: `auto` with no admin key (on once a key
    exists)."""
    if settings.auth == "off":
        return False
    admin = settings.admin_key is not None and bool(settings.admin_key.get_secret_value())
    return True if settings.auth == "required" or admin else None


def insecure_bind(settings: Settings, auth_on: bool) -> str | None:
    """Why the gateway must not start (a non-loopback bind without auth), or None."""
    host = settings.server.host
    if auth_on or is_loopback_host(host) or settings.security.allow_insecure_bind:
        return None
    return (
        f"refusing to listen on {host} without auth (anyone who can reach it could use every "
        "model): set an admin key (MLO_ADMIN_KEY or security.admin_key) or create a key, bind to "
        "127.0.0.1, or pass --allow-insecure (security.allow_insecure_bind = true)"
    )


class Guard:
    def __init__(
        self,
        settings: SecuritySettings,
        resolve: Callable[[str], ModelSpec],
        *,
        keys: KeyStore | None,
        quota: Quota,
        audit: AuditLog | None,
        redactor: Redactor | None,
        metrics: Metrics | None = None,
        node_key: SecretStr | None = None,
    ) -> None:
        """`resolve`: a model name or alias to its spec (scopes by provider, per-model limits);
        `keys` None: no database (only the admin key gets in when auth is on); `audit` and
        `redactor` None: off; `node_key`: the fleet's gateways' key (`fleet.node_key`), taken
        for inference on every model, never for admin paths; auth is on when it is set."""
        self._settings = settings
        node = node_key.get_secret_value() if node_key else ""
        self._node_key = node.encode() if node else None
        self._resolve = resolve
        self.keys = keys
        admin = settings.admin_key.get_secret_value() if settings.admin_key else ""
        self._admin_key = admin.encode() if admin else None
        self._public = frozenset(settings.public_paths)
        self._auth = _auth_fixed(settings)
        if self._node_key is not None and self._auth is None:
            self._auth = True
        self._keys_exist = False
        self._checked_at = -math.inf
        self._quota = quota
        self._audit = audit
        self._redactor = redactor
        self._refusals = metrics.refusals if metrics is not None else None
        # Sent by this process to itself (the `/mcp` tools' calls to the gateway's own routes):
        # the caller's request was charged when it came in, so its inner calls are not again.
        self.internal_token = os.urandom(16).hex()

    @property
    def auth_on(self) -> bool:
        """Whether requests need a key (`auth_on` of the settings and whether keys exist)."""
        return self._keys_exist if self._auth is None else self._auth

    def key_created(self) -> None:
        """A key was just created here: auth is on from now (`auto`)."""
        self._keys_exist = True

    async def start(self) -> None:
        """Open the limiter storage and the audit log; learn whether keys exist."""
        await self._quota.start()
        if self._audit is not None:
            await self._audit.start()
        await self._refresh_keys_exist()

    async def close(self) -> None:
        """Flush the audit log and close storages."""
        if self._audit is not None:
            await self._audit.close()
        await self._quota.close()
        if self.keys is not None:
            await self.keys.close()

    # -- arrival: authenticated -------------------------------------------------------------

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
            session=headers.get(SESSION_HEADER),
        )
        if path in self._public:
            ctx.public = True
            return ctx
        try:
            await self._identify(ctx, bearer_token(headers))
            internal = hmac.compare_digest(headers.get(INTERNAL_HEADER, ""), self.internal_token)
            if not internal:
                await self._quota.charge_caller(ctx)
        except MloError as exc:
            ctx.status = exc.status
            ctx.error = exc.code
            self._count_refusal(exc)
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
        if self._node_key is not None and hmac.compare_digest(token.encode(), self._node_key):
            ctx.key = FLEET_GATEWAY
            if is_admin_path(ctx.method, ctx.path):
                raise PermissionDenied(
                    f"{ctx.method} {ctx.path} needs an admin key, not fleet.node_key"
                )
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
            rpm_due=True,
        )

    async def limits(self, ctx: RequestContext | None, key: str | None = None) -> LimitsView:
        """The rate limits that apply to the caller, or to the key `key` (its id or name: an
        admin key's question, or a key's about itself), and what is left of each this minute."""
        if key is None:
            return await self._quota.report(self._quota.subject(ctx) if ctx else None)
        own = ctx is not None and ctx.key is not None and key in (ctx.key.id, ctx.key.name)
        if ctx is not None and self.auth_on and not ctx.admin and not own:
            raise PermissionDenied("reading another key's limits needs an admin key")
        if self.keys is None:
            raise NotFound("no key store: this gateway runs without a database")
        return await self._quota.report(self._quota.key_subject(await self.keys.find(key)))

    def response_headers(self, ctx: RequestContext) -> list[tuple[bytes, bytes]]:
        """`x-ratelimit-*` for a response that was let through (empty with no limits)."""
        return self._quota.headers(ctx)

    # -- the model is known: admitted -----------------------------------------------------

    async def admit(self, ctx: RequestContext, kind: str, data: MutableMapping[str, Any]) -> None:
        """May this request use `data["model"]`, and are there tokens left for it?"""
        model = str(data.get("model"))
        ctx.model = model
        try:
            if ctx.rpm_due:  # a message on a long connection
                ctx.rpm_due = False
                if ctx.key is not None and self.keys is not None:
                    ctx.key = await self.keys.recheck(ctx.key, time.time())  # revoked since?
                await self._quota.charge_caller(ctx)
            if self._audit is not None:  # hashed by the audit writer, off the request's path
                ctx.prompt = data.get("messages") if kind == "chat" else data.get("prompt")
                if ctx.prompt is None:
                    ctx.prompt = data.get("input")
            if ctx.key is not None and ctx.key.models:
                self._check_scope(ctx, model, self._resolve(model))
            await self._quota.admit(ctx, kind, data)
        except MloError as exc:
            self._count_refusal(exc)
            raise

    async def enter(
        self,
        ctx: RequestContext | None,
        spec: ModelSpec,
        kind: str,
        data: MutableMapping[str, Any],
    ) -> list[Charge]:
        """May `spec` answer (the model asked for, or one of its fallbacks)? The key's scope
        for `spec` itself, then `spec`'s own limits; raises PermissionDenied or RateLimited
        (the deployment is skipped). The charges, to `give_back` if it fails."""
        if ctx is None:
            return []
        key = ctx.key
        if key is not None and key.models and not in_scope(key.models, spec.name, spec):
            asked = f", the fallback of {ctx.model!r}," if ctx.model not in spec.names else ""
            raise PermissionDenied(
                f"key {key.id} ({key.name}) may not use {spec.name!r}{asked} (it may use "
                f"{', '.join(key.models)})"
            )
        if not self._quota.per_model:
            return []
        return await self._quota.admit_deployment(ctx, kind, data, spec)

    async def give_back(self, ctx: RequestContext | None, charges: list[Charge]) -> None:
        """A deployment failed and the next is tried: its limits are refunded."""
        if ctx is not None and charges:
            await self._quota.give_back(ctx, charges)

    def none_left(self, model: str, failure: MloError | None, skipped: list[MloError]) -> MloError:
        """The error when no deployment of `model` answered: the last failure, saying which
        deployments this request could not use; else why each was refused (a rate limit
        first, with its headers)."""
        reasons = "; ".join(exc.message for exc in skipped)
        if failure is not None:
            return _noted(failure, f"not tried: {reasons}") if skipped else failure
        limited = next((exc for exc in skipped if isinstance(exc, RateLimited)), None)
        if limited is not None:
            others = "; ".join(exc.message for exc in skipped if exc is not limited)
            error = _noted(limited, f"also not tried: {others}") if others else limited
        else:
            error = Unavailable(
                f"no deployment of {model!r} that this request may use is available now: {reasons}",
                retry_after_s=1,
            )
        self._count_refusal(error)
        return error

    def authorize(self, ctx: RequestContext | None, model: str, *, admin: bool = False) -> None:
        """For actions on a model other than inference (Ollama's load and unload idiom): the
        key's scope, and an admin key where `admin` (unloading affects everyone)."""
        if ctx is None or not self.auth_on:
            return
        ctx.model = model
        try:
            if admin and not ctx.admin:
                raise PermissionDenied(f"unloading {model!r} needs an admin key")
            if ctx.key is not None and ctx.key.models:
                self._check_scope(ctx, model, self._resolve(model))
        except MloError as exc:
            self._count_refusal(exc)
            raise

    def _check_scope(self, ctx: RequestContext, model: str, spec: ModelSpec | None) -> None:
        key = ctx.key
        if key is not None and key.models and spec and not in_scope(key.models, model, spec):
            raise PermissionDenied(
                f"key {key.id} ({key.name}) may not use model {model!r}; it may use "
                f"{', '.join(key.models)}"
            )

    # -- leaving: redacted; ending: finished ----------------------------------------------

    def outbound(
        self, spec: ModelSpec, data: dict[str, Any], ctx: RequestContext | None
    ) -> dict[str, Any]:
        """The request as it may leave for `spec` (secrets masked where `spec.redact`)."""
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
        await self._quota.settle(ctx)
        if not ctx.public:
            self._record(ctx)

    def _count_refusal(self, exc: MloError) -> None:
        if self._refusals is not None and not isinstance(exc, ModelNotFound):
            self._refusals.labels(str(exc.status), exc.code or "error").inc()

    def _record(self, ctx: RequestContext) -> None:
        if self._audit is not None:
            self._audit.record(audit_event(ctx))


def _noted(exc: MloError, note: str) -> MloError:
    """`exc`, its message followed by `note` (what the caller should know besides)."""
    exc.message = f"{exc.message}; {note}"
    exc.args = (exc.message,)
    return exc


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
    if ctx.cache_read_tokens or ctx.cache_write_tokens:  # prompt tokens served from a cache
        event["cache_read_tokens"] = ctx.cache_read_tokens
        event["cache_write_tokens"] = ctx.cache_write_tokens
    if ctx.prompt is not None:
        event["prompt"] = ctx.prompt  # the writer hashes it, keeps it only with log_prompts
    if ctx.error:
        event["error"] = ctx.error
    return event
