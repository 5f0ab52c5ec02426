"""API keys: their format, creation, verification and scopes.

A key is `mlo-<id>-<secret>`: the id finds the stored row with one indexed lookup, the secret
(32 random bytes) is checked against its stored SHA-256 in constant time. A secret this long
needs no slow hash; the secret itself is shown once, at creation, and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ml_offload.domain import ApiKey, ModelSpec
from ml_offload.errors import AuthError, InvalidRequest, NotFound
from ml_offload.storage.keys_repo import KeyRepository

PREFIX = "mlo-"
_ID_BYTES = 6  # 12 hex characters
_SECRET_BYTES = 32
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
MAX_LIMIT = 2**31 - 1  # a key's rpm and tpm: what its columns hold (INTEGER in PostgreSQL)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """(key id, the full key to give out, the SHA-256 of its secret to store)."""
    key_id = secrets.token_hex(_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return key_id, f"{PREFIX}{key_id}-{secret}", sha256_hex(secret)


def split_key(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX) :].partition("-")
    if not sep or not key_id or not secret or len(key_id) > 32:
        return None
    return key_id, secret


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (OpenAI, Ollama clients) or
    `x-api-key: <key>` (Anthropic clients)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def parse_expiry(text: str, now: float | None = None) -> float:
    """`30d`, `12h`, `90m`, `2w` from now, or an ISO date/time (UTC unless it says otherwise)."""
    now = time.time() if now is None else now
    match = _DURATION.match(text)
    if match:
        return now + float(match.group(1)) * _UNIT_S[match.group(2).lower()]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(
            f"expires {text!r}: give a duration like 30d, 12h, 90m, or an ISO date (2027-01-31)",
            param="expires",
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    stamp = when.timestamp()
    if stamp <= now:
        raise InvalidRequest(f"expires {text!r} is in the past", param="expires")
    return stamp


def provider_of(spec: ModelSpec) -> str:
    """What `<backend>:*` scopes match: the backend of a remote model, `local` for our own
    (on this host, or on a fleet node behind this gateway)."""
    return "local" if spec.is_local or spec.on_fleet_node else spec.backend


def in_scope(scopes: Iterable[str], requested: str, spec: ModelSpec) -> bool:
    """Whether a key limited to `scopes` may use `requested` (resolved to `spec`)."""
    names = {requested, *spec.names}
    for scope in scopes:
        if scope == "*" or scope in names:
            return True
        if scope.endswith(":*") and scope[:-2] == provider_of(spec):
            return True
    return False


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    secret: str  # the whole key (`mlo-<id>-<secret>`), shown once


class KeyStore:
    """Create, list, revoke and check keys in the database (the CLI and the gateway share it)."""

    def __init__(self, repo: KeyRepository) -> None:
        self._repo = repo

    async def create(
        self,
        name: str,
        *,
        models: Iterable[str] = (),
        admin: bool = False,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: float | None = None,
        cert_subject: str | None = None,
    ) -> NewKey:
        if not name.strip():
            raise InvalidRequest("a key needs a name (--name)", param="name")
        for value, what in ((rpm, "rpm"), (tpm, "tpm")):
            if value is not None and not 1 <= value <= MAX_LIMIT:
                raise InvalidRequest(f"{what} must be from 1 to {MAX_LIMIT}", param=what)
        key_id, token, digest = new_key()
        key = ApiKey(
            id=key_id,
            name=name.strip(),
            models=tuple(m for m in models if m),
            admin=admin,
            rpm=rpm,
            tpm=tpm,
            expires_at=expires_at,
            cert_subject=cert_subject or None,
            created_at=time.time(),
        )
        await self._repo.insert(key, digest)
        return NewKey(key, token)

    async def list(self) -> list[ApiKey]:
        return await self._repo.list_all()

    async def find(self, id_or_name: str, *, doing: str = "name") -> ApiKey:
        """The key with this id, or the one unrevoked key with this name."""
        found = await self._repo.find(id_or_name)
        live = [k for k in found if k.revoked_at is None]
        if not found:
            raise NotFound(f"no key with id or name {id_or_name!r} (see `mlo keys ls`)")
        if len(live) > 1:
            ids = ", ".join(k.id for k in live)
            raise InvalidRequest(f"several keys are named {id_or_name!r}; {doing} one by id: {ids}")
        return live[0] if live else found[0]

    async def revoke(self, id_or_name: str) -> ApiKey:
        """Revoke by id, or by name when exactly one unrevoked key has it."""
        target = await self.find(id_or_name, doing="revoke")
        now = time.time()
        if target.revoked_at is None:
            await self._repo.revoke(target.id, now)
            target = replace(target, revoked_at=now)
        return target

    async def any_exist(self) -> bool:
        return await self._repo.any_exist()

    async def close(self) -> None:
        await self._repo.close()

    async def verify(self, token: str, now: float) -> ApiKey:
        """The live key for `token`, or AuthError (unknown, wrong secret, revoked, expired)."""
        parts = split_key(token)
        found = await self._repo.lookup(parts[0]) if parts else None
        stored = found[1] if found else _DUMMY_HASH
        given = sha256_hex(parts[1] if parts else token)
        if not hmac.compare_digest(given, stored) or found is None:
            raise AuthError("invalid API key; check the key, or create one with `mlo keys create`")
        return _live(found[0], now)

    async def recheck(self, key: ApiKey, now: float) -> ApiKey:
        """`key` as stored now, for long connections (each WebSocket message): AuthError once
        it is revoked or expired."""
        found = await self._repo.lookup(key.id)
        if found is None:
            raise AuthError(f"API key {key.id} ({key.name}) no longer exists")
        return _live(found[0], now)


def is_live(key: ApiKey, now: float) -> bool:
    """Not revoked and not expired: a key the guard lets in."""
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


def _live(key: ApiKey, now: float) -> ApiKey:
    if is_live(key, now):
        return key
    if key.revoked_at is not None or key.expires_at is None:
        raise AuthError(f"API key {key.id} ({key.name}) was revoked; ask for a new key")
    when = datetime.fromtimestamp(key.expires_at, UTC).isoformat(timespec="seconds")
    raise AuthError(f"API key {key.id} ({key.name}) expired at {when}; ask for a new key")
