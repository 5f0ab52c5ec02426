"""The `api_keys` table: stored keys (the hash of each secret, never the secret itself)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from ml_offload.domain import ApiKey
from ml_offload.storage.db import Database
from ml_offload.storage.tables import api_keys

# Built once: the per-request lookup is on the hot path (SQLAlchemy caches its compiled form).
_BY_ID = sa.select(api_keys).where(api_keys.c.id == sa.bindparam("id"))
_ANY = sa.select(api_keys.c.id).limit(1)
_RETRY_S = 5.0
_CACHED_ROWS = 4096
log = logging.getLogger(__name__)


class _DirectReader:
    """The per-request lookup without SQLAlchemy's async layers (greenlet, pool, transaction:
    ~0.4 ms a query). SQLite: its own `sqlite3` connection, only read, in the event loop (a
    primary-key read takes microseconds; in WAL mode readers never wait for writers, and a
    thread hop per query stalls behind the GIL under load). PostgreSQL: a held asyncpg
    connection. SQLAlchemy compiles the statement and the columns' own types decode the row,
    so both read what `get` reads. Outside a transaction each query sees the latest commit (a
    revocation by another gateway)."""

    def __init__(
        self,
        dialect: sa.Dialect,
        fetch: Callable[[str, str], Awaitable[Any]],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.sql = str(_BY_ID.compile(dialect=dialect))
        self._fetch, self._close = fetch, close
        self._names = [c.name for c in api_keys.columns]
        self._decode = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in api_keys.columns
        ]
        self._seen: dict[str, tuple[Any, tuple[ApiKey, str]]] = {}

    @classmethod
    async def open(cls, db: Database) -> _DirectReader | None:
        url, dialect = db.engine.url, db.engine.dialect
        if url.get_backend_name() == "sqlite":
            path = url.database or ""
            if path in ("", ":memory:") or path.startswith("file:"):
                return None
            conn = sqlite3.connect(
                f"file:{quote(path)}?mode=rw",  # never creates; read-only would need the WAL files
                uri=True,
                timeout=0.05,
                isolation_level=None,
                check_same_thread=False,
            )

            rows: dict[str, Any] = {}  # key id -> row, valid while no other connection commits
            version: list[int] = [-1]

            async def fetch_sqlite(sql: str, key_id: str) -> Any:
                # `data_version` changes when any other connection (this gateway's pool, a
                # `mlo keys revoke`, another gateway) commits: then the rows are read again.
                now = conn.execute("PRAGMA data_version").fetchone()[0]
                if now != version[0] or len(rows) > _CACHED_ROWS:
                    rows.clear()
                    version[0] = now
                row = rows.get(key_id)
                if row is None:
                    row = rows[key_id] = conn.execute(sql, (key_id,)).fetchone()
                return row

            async def close_sqlite() -> None:
                conn.close()

            return cls(dialect, fetch_sqlite, close_sqlite)
        held = await db.engine.connect()
        driver: Any = (await held.get_raw_connection()).driver_connection
        lock = asyncio.Lock()  # one query at a time on one asyncpg connection

        async def fetch_pg(sql: str, key_id: str) -> Any:
            async with lock:
                return await driver.fetchrow(sql, key_id)

        return cls(dialect, fetch_pg, held.close)

    async def fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        row = await self._fetch(self.sql, key_id)
        if row is None:
            return None
        seen = self._seen.get(key_id)
        if seen is not None and seen[0] is row:  # the SQLite reader's cached row: decoded once
            return seen[1]
        values = {
            name: value if decode is None else decode(value)
            for name, value, decode in zip(self._names, tuple(row), self._decode, strict=True)
        }
        found = _key(values), str(values["secret_sha256"])
        if len(self._seen) > _CACHED_ROWS:
            self._seen.clear()
        self._seen[key_id] = (row, found)
        return found

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._close()


class KeyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._reader: _DirectReader | None = None
        self._reader_failed_at = -math.inf

    async def close(self) -> None:
        """Give back the connection the per-request lookup holds."""
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    async def lookup(self, key_id: str) -> tuple[ApiKey, str] | None:
        """`get` on the hot path: through a held connection's driver, falling back to `get`
        (and trying the held connection again after a while) when that fails."""
        reader = await self._direct_reader()
        if reader is not None:
            try:
                found = await reader.fetch(key_id)
            except Exception:
                log.warning("direct key lookup failed; using the pool", exc_info=True)
                self._reader_failed_at = time.monotonic()
                await self.close()
            else:
                return found
        return await self.get(key_id)

    async def _direct_reader(self) -> _DirectReader | None:
        if self._reader is None and time.monotonic() - self._reader_failed_at > _RETRY_S:
            try:
                self._reader = await _DirectReader.open(self._db)
            except Exception:
                self._reader_failed_at = time.monotonic()
            else:
                if self._reader is None:  # an in-memory database: the pool it is
                    self._reader_failed_at = math.inf
        return self._reader

    async def insert(self, key: ApiKey, secret_sha256: str) -> None:
        async with self._db.begin() as conn:
            await conn.execute(sa.insert(api_keys), [_row(key, secret_sha256)])

    async def get(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key with this id and the SHA-256 of its secret; None when there is none."""
        async with self._db.begin() as conn:
            row = (await conn.execute(_BY_ID, {"id": key_id})).first()
        return None if row is None else (_key(row._mapping), row.secret_sha256)

    async def list_all(self) -> list[ApiKey]:
        async with self._db.begin() as conn:
            result = await conn.execute(
                sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
            )
            return [_key(row._mapping) for row in result]

    async def find(self, id_or_name: str) -> list[ApiKey]:
        """Keys whose id, or else whose name, is `id_or_name` (oldest first)."""
        col = api_keys.c
        stmt = sa.select(api_keys).order_by(col.created_at, col.id)
        async with self._db.begin() as conn:
            rows = list(await conn.execute(stmt.where(col.id == id_or_name)))
            if not rows:
                rows = list(await conn.execute(stmt.where(col.name == id_or_name)))
        return [_key(row._mapping) for row in rows]

    async def revoke(self, key_id: str, at: float) -> bool:
        """Mark a key revoked (kept for the audit trail); False when it was already."""
        stmt = (
            sa.update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=_dt(at))
        )
        async with self._db.begin() as conn:
            return (await conn.execute(stmt)).rowcount > 0

    async def any_exist(self) -> bool:
        """Whether any key was ever created (revoked ones count: auth stays on)."""
        async with self._db.begin() as conn:
            return (await conn.execute(_ANY)).first() is not None


def _dt(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def _ts(d: datetime | None) -> float | None:
    if d is None:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()  # SQLite drops the zone


def _row(key: ApiKey, secret_sha256: str) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "secret_sha256": secret_sha256,
        "models": list(key.models),
        "admin": key.admin,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "cert_subject": key.cert_subject,
        "created_at": _dt(key.created_at),
        "expires_at": _dt(key.expires_at),
        "revoked_at": _dt(key.revoked_at),
    }


def _key(row: Mapping[Any, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        models=tuple(row["models"] or ()),
        admin=bool(row["admin"]),
        rpm=row["rpm"],
        tpm=row["tpm"],
        expires_at=_ts(row["expires_at"]),
        revoked_at=_ts(row["revoked_at"]),
        cert_subject=row["cert_subject"],
        created_at=_ts(row["created_at"]) or 0.0,
    )
