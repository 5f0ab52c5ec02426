"""The database and the models table, on SQLite and (when available) PostgreSQL.

PostgreSQL runs when `MLO_TEST_POSTGRES_URL` is set, e.g.
`postgresql+asyncpg://postgres:postgres@127.0.0.1:5432/mlo_test`; its tables are dropped first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from ml_offload.domain import DeploymentKind, GgufInfo, ModelSpec, NodeBeat, NodeDevice, ServedModel
from ml_offload.errors import ConfigError, Unavailable
from ml_offload.storage import Database, FileStamp, ModelRepository, async_url
from ml_offload.storage.db import HEAD_REVISION, _current_revision
from ml_offload.storage.nodes_repo import NodeRepository
from ml_offload.storage.tables import metadata

POSTGRES_ENV = "MLO_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", "postgresql"]

INFO = GgufInfo(
    architecture="llama",
    name="Tiny",
    parameters=134_515_008,
    quantization="Q4_K_M",
    context_length=8192,
    block_count=30,
    head_count=9,
    head_count_kv=3,
    embedding_length=576,
    file_size_bytes=98_362_432,
)
LOCAL = ModelSpec(
    name="tiny",
    path=Path("/models/tiny.gguf"),
    aliases=("t", "tiny:latest"),
    ctx_size=2048,
    parallel=2,
    max_gpu_layers=10,
    ttl_s=0.0,
    extra_args=("--flash-attn", "on"),
    pinned=True,
    embeddings=False,
    info=INFO,
    source="scan",
)
EXTERNAL = ModelSpec(
    name="llamacpp", kind=DeploymentKind.REMOTE, url="http://127.0.0.1:8080", source="env"
)
STAMP = FileStamp(size_bytes=98_362_432, mtime_ns=1_700_000_000_123_456_789)


def database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'registry.db'}"
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"PostgreSQL not available: set {POSTGRES_ENV}")
    return url


async def reset(url: str) -> None:
    """Drop every table of ours, so each test starts from an empty database."""
    engine = create_async_engine(async_url(url))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    await engine.dispose()


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    chosen = database_url(request.param, tmp_path)
    if request.param == "postgresql":
        await reset(chosen)
    return chosen


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    database = await Database.open(url)
    yield database
    await database.close()


@pytest.fixture
def repo(db: Database) -> ModelRepository:
    return ModelRepository(db, owner="node-a")


async def test_migrations_create_the_schema(db: Database) -> None:
    async with db.begin() as conn:
        version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
        tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert version == HEAD_REVISION
    assert {"models", "alembic_version"} <= tables


async def test_migrations_match_the_tables_module(db: Database) -> None:
    async with db.begin() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"include_name": _not_full_text}), metadata
            )
        )
    assert diff == []


def _not_full_text(name: str | None, kind: str, parents: dict[str, str | None]) -> bool:
    """The full-text index lives outside the tables module: SQLite's FTS5 table (and its shadow
    tables), PostgreSQL's generated `search` column (migration 0005)."""
    if kind == "table" and name and name.startswith("knowledge_fts"):
        return False
    if kind == "index" and name == "ix_knowledge_notes_search":
        return False
    in_notes = parents.get("table_name") == "knowledge_notes"
    return not (kind == "column" and name == "search" and in_notes)


async def _revision(db: Database) -> str | None:
    async with db.begin() as conn:
        return await conn.run_sync(_current_revision)


async def test_open_is_idempotent(url: str) -> None:
    for _ in range(2):
        db = await Database.open(url)
        assert await _revision(db) == HEAD_REVISION
        await db.close()


async def test_concurrent_opens_migrate_once(url: str) -> None:
    if url.startswith("sqlite"):
        pytest.skip("SQLite is one host's file; concurrent first opens are a PostgreSQL concern")
    dbs = await asyncio.gather(*(Database.open(url) for _ in range(4)))
    for db in dbs:
        assert await _revision(db) == HEAD_REVISION
        await db.close()


async def test_sqlite_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "registry.db"
    db = await Database.open(f"sqlite:///{path}")  # a plain sqlite URL gets aiosqlite
    assert db.dialect == "sqlite"
    await db.close()
    assert path.is_file()
    # private from the start: keys' hashes live here (`mlo security-audit` checks it too)
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg"),
        ("postgres://u:p@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u:p@h/db", "postgresql+asyncpg"),
    ],
)
def test_async_url_picks_an_async_driver(url: str, driver: str) -> None:
    assert async_url(url).drivername == driver


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_unsupported_url(url: str) -> None:
    with pytest.raises(ConfigError, match=r"storage\.database_url"):
        async_url(url)


async def test_unreachable_postgres_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot open the database") as caught:
        await Database.open("postgresql://mlo:secret@127.0.0.1:1/nothing")
    assert "secret" not in caught.value.message
    assert "storage.database_url" in caught.value.message


async def test_database_errors_become_unavailable(db: Database) -> None:
    with pytest.raises(Unavailable, match="failed"):
        async with db.begin() as conn:
            await conn.execute(sa.text("SELECT * FROM no_such_table"))


async def test_upsert_and_list_round_trip(repo: ModelRepository) -> None:
    await repo.upsert_many([LOCAL, EXTERNAL], {"tiny": STAMP})
    assert await repo.list_all() == [EXTERNAL, LOCAL]  # sorted by name


async def test_upsert_updates_by_name(repo: ModelRepository) -> None:
    await repo.upsert_many([LOCAL, EXTERNAL])
    changed = ModelSpec(name="tiny", path=Path("/elsewhere/tiny.gguf"), aliases=("x",))
    await repo.upsert_many([changed])
    assert await repo.list_all() == [EXTERNAL, changed]


async def test_upsert_nothing(repo: ModelRepository) -> None:
    await repo.upsert_many([])
    assert await repo.list_all() == []


async def test_cached_info_needs_the_same_path_size_and_mtime(repo: ModelRepository) -> None:
    await repo.upsert_many([LOCAL], {"tiny": STAMP})
    assert LOCAL.path is not None
    assert await repo.cached_info(LOCAL.path, *STAMP) == INFO
    assert await repo.cached_info(LOCAL.path, STAMP.size_bytes + 1, STAMP.mtime_ns) is None
    assert await repo.cached_info(LOCAL.path, STAMP.size_bytes, STAMP.mtime_ns + 1) is None
    assert await repo.cached_info(Path("/models/other.gguf"), *STAMP) is None


async def test_no_stamp_no_cache(repo: ModelRepository) -> None:
    await repo.upsert_many([LOCAL])
    assert LOCAL.path is not None
    assert await repo.cached_info(LOCAL.path, *STAMP) is None


async def test_remove_missing(repo: ModelRepository) -> None:
    other = ModelSpec(name="other", path=Path("/models/other.gguf"))
    await repo.upsert_many([LOCAL, EXTERNAL, other])
    assert await repo.remove_missing({"tiny"}) == ["llamacpp", "other"]
    assert [spec.name for spec in await repo.list_all()] == ["tiny"]
    assert await repo.remove_missing({"tiny"}) == []


async def test_gateways_sharing_a_database_keep_their_own_rows(db: Database) -> None:
    """Rows belong to the gateway that found them: a refresh elsewhere neither deletes nor
    overwrites them, even under the same model name."""
    a, b = ModelRepository(db, owner="node-a"), ModelRepository(db, owner="node-b")
    theirs = ModelSpec(name="tiny", path=Path("/other/tiny.gguf"))
    await a.upsert_many([LOCAL, EXTERNAL], {"tiny": STAMP})
    await b.upsert_many([theirs])
    assert await b.remove_missing({"tiny"}) == []  # b's refresh: a's llamacpp stays
    assert await a.list_all() == [EXTERNAL, LOCAL]
    assert await b.list_all() == [theirs]
    assert await a.remove_missing({"llamacpp"}) == ["tiny"]
    assert await b.list_all() == [theirs]
    assert LOCAL.path is not None
    assert await b.cached_info(LOCAL.path, *STAMP) is None  # another node's file


async def test_rows_from_before_owners_go_at_the_next_refresh(
    repo: ModelRepository, db: Database
) -> None:
    await repo.upsert_many([LOCAL])
    async with db.begin() as conn:
        await conn.execute(sa.text("UPDATE models SET owner = ''"))
    assert await repo.list_all() == []
    await repo.upsert_many([LOCAL])
    assert await repo.remove_missing({"tiny"}) == []
    async with db.begin() as conn:
        owners = (await conn.execute(sa.text("SELECT owner FROM models"))).scalars().all()
    assert owners == ["node-a"]


def test_head_revision_constant_matches_the_migrations() -> None:
    from alembic.script import ScriptDirectory

    from ml_offload.storage.db import alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION


MEMORY_INFO = dataclasses.replace(
    INFO,
    layer_weight_bytes=(2_216_448,) * 30,
    input_weight_bytes=30_081_024,
    output_weight_bytes=2304,
    output_tied=True,
    vocab_size=49152,
    feed_forward_length=1536,
    key_length=64,
    value_length=64,
    head_count_kv_per_layer=(3, 3, 0),
    sliding_window=512,
    swa_layers=(True, False) * 15,
    expert_count=8,
    expert_used_count=2,
    expert_feed_forward_length=256,
)


async def test_memory_metadata_round_trips(repo: ModelRepository) -> None:
    spec = dataclasses.replace(LOCAL, info=MEMORY_INFO)
    await repo.upsert_many([spec], {spec.name: STAMP})
    assert await repo.list_all() == [spec]
    assert await repo.cached_info(LOCAL.path, *STAMP) == MEMORY_INFO


async def test_rows_from_before_the_memory_column_are_read_again(
    repo: ModelRepository, db: Database
) -> None:
    """A row written by 0001 has no memory metadata: the cache misses so the file is re-read."""
    await repo.upsert_many([LOCAL], {LOCAL.name: STAMP})
    async with db.begin() as conn:
        await conn.execute(sa.text("UPDATE models SET gguf_memory = NULL"))
    assert await repo.cached_info(LOCAL.path, *STAMP) is None
    [listed] = await repo.list_all()
    assert listed.info == INFO  # the scalar columns still load, with the new fields' defaults


def test_downgrade_and_upgrade_the_memory_column(tmp_path: Path) -> None:
    from alembic import command

    from ml_offload.storage.db import alembic_config

    url = f"sqlite:///{tmp_path / 'migrate.db'}"
    config = alembic_config(url)
    command.upgrade(config, "head")
    command.downgrade(config, "0001")
    command.upgrade(config, "head")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("models")}
    engine.dispose()
    assert "gguf_memory" in columns


def test_downgrade_keeps_one_row_per_name(tmp_path: Path) -> None:
    from alembic import command

    from ml_offload.storage.db import alembic_config

    url = f"sqlite:///{tmp_path / 'migrate.db'}"
    config = alembic_config(url)
    command.upgrade(config, "head")
    engine = sa.create_engine(url)
    insert = (
        "INSERT INTO models (owner, name, kind, aliases, source, ctx_size, parallel, "
        "max_gpu_layers, ttl_s, pinned, embeddings, extra_args, updated_at) VALUES "
        "(:owner, 'm', 'llamacpp', '[]', 'scan', 512, 1, -1, 0, 0, 1, '[]', :at)"
    )
    with engine.begin() as conn:
        conn.execute(sa.text(insert), {"owner": "node-a", "at": "2026-12-01 00:00:00"})
        conn.execute(sa.text(insert), {"owner": "node-b", "at": "2026-12-02 00:00:00"})
    command.downgrade(config, "0005")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, updated_at FROM models")).all()
    command.upgrade(config, "head")
    engine.dispose()
    assert [(name, str(at)[:10]) for name, at in rows] == [("m", "2026-12-02")]


async def test_a_node_beat_round_trips_with_its_url_and_models(db: Database) -> None:
    nodes = NodeRepository(db)
    beat = NodeBeat(
        name="gpu1",
        role="node",
        devices=(NodeDevice(0, "Sim", 8, 4),),
        loaded=("m",),
        host_free_bytes=1,
        queue_depth=2,
        started_at=1.0,
        beat_at=2.0,
        lease_s=3.0,
        url="https://gpu1:9000",
        served=(ServedModel("m", ("alias",), 123), ServedModel("n")),
    )
    await nodes.beat(beat)
    assert await nodes.all() == [beat]
    await nodes.beat(dataclasses.replace(beat, served=(), url=None))
    assert await nodes.all() == [dataclasses.replace(beat, served=(), url=None)]
