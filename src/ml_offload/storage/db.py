"""The database: one async SQLAlchemy engine, SQLite or PostgreSQL, migrated to head on open."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ml_offload.errors import ConfigError, Unavailable, safe_url

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration. Alembic (and its ~11 MB of imports) is loaded only when the database is
# not at this revision; tests/unit/test_storage.py checks it matches the migrations folder.
HEAD_REVISION = "0009"

MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_KEY = 0x6D6C6F_0001  # PostgreSQL advisory lock: one gateway migrates at a time
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}
_EXAMPLES = "sqlite+aiosqlite:///path/registry.db or postgresql+asyncpg://user:pass@host/db"


def async_url(url: str) -> sa.URL:
    """Parse a database URL and give it an async driver (`postgresql://` → asyncpg)."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"storage.database_url {safe_url(url)!r} is not a database URL; use {_EXAMPLES}"
        ) from None
    parsed = parsed.set(drivername=_ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername))
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"storage.database_url: {parsed.get_backend_name()} is not supported; use {_EXAMPLES}"
        )
    return parsed


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for the packaged migrations; no alembic.ini needed."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class Database:
    """The shared engine for the registry, keys, usage and audit tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def url(self) -> str:
        """The URL with its password hidden, for logs and messages."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Database:
        """Connect (creating a SQLite file's folder) and upgrade the schema to head."""
        parsed = async_url(url)
        _make_parent(parsed)
        db = cls(_create_engine(parsed))
        try:
            if migrate:
                await db.migrate()
        except Unavailable as exc:
            await db.close()
            raise ConfigError(f"cannot open the database: {exc.message}") from exc
        except BaseException:
            await db.close()
            raise
        return db

    async def migrate(self) -> None:
        async with self.begin() as conn:
            if await conn.run_sync(_current_revision) != HEAD_REVISION:
                await conn.run_sync(_upgrade)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction; database failures surface as `Unavailable`."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            cause = exc.orig if isinstance(exc, DBAPIError) else exc
            raise Unavailable(
                f"database {self.url} failed: {safe_url(cause)}; check storage.database_url "
                "(MLO_STORAGE__DATABASE_URL) and that the database is reachable"
            ) from exc

    async def close(self) -> None:
        await self.engine.dispose()


def _create_engine(url: sa.URL) -> AsyncEngine:
    options: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        options["pool_pre_ping"] = True
    else:
        options["connect_args"] = {"timeout": 30}  # wait for another writer, not fail at once
    try:
        engine = create_async_engine(url, **options)
    except ImportError as exc:
        raise ConfigError(
            f"storage.database_url needs the {exc.name or 'database'} driver: "
            "pip install 'ml-offload[postgres]'"
        ) from None
    if url.get_backend_name() == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers go on while the audit writer commits; foreign keys are off by default."""
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _make_parent(url: sa.URL) -> None:
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return
    if database.startswith("file:"):
        return
    path = Path(database).expanduser()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Private from the start (keys' hashes, the registry); SQLite gives its -wal and -shm
        # files the database file's permissions.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path} for the database: {exc.strerror}; "
            "set storage.data_dir or storage.database_url"
        ) from None


def _current_revision(connection: sa.Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _upgrade(connection: sa.Connection) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
        )
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
