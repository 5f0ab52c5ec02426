"""The `models` table: the registry's last known models and their GGUF metadata.

Each gateway (or node) reads and writes only its own rows (`owner`): gateways sharing one
PostgreSQL registry never delete or overwrite each other's models."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ml_offload.domain import DeploymentKind, GgufInfo, ModelSpec
from ml_offload.storage.db import Database
from ml_offload.storage.tables import models

_INFO_COLUMNS = (
    "architecture",
    "gguf_name",
    "parameters",
    "quantization",
    "context_length",
    "block_count",
    "head_count",
    "head_count_kv",
    "embedding_length",
    "file_size_bytes",
)
# GgufInfo fields kept together in the `gguf_memory` JSON column (tuples stored as lists).
_MEMORY_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(GgufInfo)
    if f.name not in _INFO_COLUMNS and f.name not in ("name",)
)


class FileStamp(NamedTuple):
    """`os.stat` of a model file when its metadata was read: unchanged stamp, unchanged file."""

    size_bytes: int
    mtime_ns: int


class ModelRepository:
    def __init__(self, db: Database, *, owner: str) -> None:
        self._db = db
        self.owner = owner

    async def upsert_many(
        self, specs: Sequence[ModelSpec], stamps: Mapping[str, FileStamp] | None = None
    ) -> None:
        """Insert or update by name; a stamp (by name) lets a rescan reuse the metadata."""
        if not specs:
            return
        now = datetime.now(UTC)
        rows = [
            {**_row(spec, (stamps or {}).get(spec.name), now), "owner": self.owner}
            for spec in specs
        ]
        insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
        stmt = insert(models)
        stmt = stmt.on_conflict_do_update(
            index_elements=[models.c.owner, models.c.name],
            set_={c.name: stmt.excluded[c.name] for c in models.columns if not c.primary_key},
        )
        async with self._db.begin() as conn:
            await conn.execute(stmt, rows)

    async def list_all(self) -> list[ModelSpec]:
        async with self._db.begin() as conn:
            query = sa.select(models).where(self._mine).order_by(models.c.name)
            result = await conn.execute(query)
            return [_spec(row._mapping) for row in result]

    async def remove_missing(self, keep_names: set[str]) -> list[str]:
        """Delete our rows not in `keep_names` (files gone, models dropped from config), and
        the ownerless rows written before owners existed; other owners' rows stay."""
        async with self._db.begin() as conn:
            names = set((await conn.execute(sa.select(models.c.name).where(self._mine))).scalars())
            gone = sorted(names - keep_names)
            if gone:
                await conn.execute(sa.delete(models).where(self._mine, models.c.name.in_(gone)))
            await conn.execute(sa.delete(models).where(models.c.owner == ""))
        return gone

    @property
    def _mine(self) -> sa.ColumnElement[bool]:
        return models.c.owner == self.owner

    async def cached_info(self, path: Path, size_bytes: int, mtime_ns: int) -> GgufInfo | None:
        """The metadata stored for this file if it has not changed since it was read."""
        query = (
            sa.select(models)
            .where(
                self._mine,
                models.c.path == str(path),
                models.c.stat_size_bytes == size_bytes,
                models.c.stat_mtime_ns == mtime_ns,
                models.c.architecture.is_not(None),
                models.c.gguf_memory.is_not(None),  # rows from before 0002: read the file again
            )
            .limit(1)
        )
        async with self._db.begin() as conn:
            row = (await conn.execute(query)).first()
        return _info(row._mapping) if row is not None else None


def _row(spec: ModelSpec, stamp: FileStamp | None, now: datetime) -> dict[str, Any]:
    info = spec.info
    stamp = stamp if info is not None else None
    return {
        "name": spec.name,
        "path": str(spec.path) if spec.path is not None else None,
        "url": spec.url,
        "kind": spec.kind.value,
        "aliases": list(spec.aliases),
        "source": spec.source,
        "ctx_size": spec.ctx_size,
        "parallel": spec.parallel,
        "max_gpu_layers": -1 if spec.max_gpu_layers is None else spec.max_gpu_layers,
        "ttl_s": spec.ttl_s,
        "pinned": spec.pinned,
        "embeddings": spec.embeddings,
        "extra_args": list(spec.extra_args),
        "architecture": info.architecture if info else None,
        "gguf_name": info.name if info else None,
        "parameters": info.parameters if info else None,
        "quantization": info.quantization if info else None,
        "context_length": info.context_length if info else None,
        "block_count": info.block_count if info else None,
        "head_count": info.head_count if info else None,
        "head_count_kv": info.head_count_kv if info else None,
        "embedding_length": info.embedding_length if info else None,
        "gguf_memory": _memory_json(info) if info else None,
        "file_size_bytes": info.file_size_bytes if info else None,
        "stat_size_bytes": stamp.size_bytes if stamp else None,
        "stat_mtime_ns": stamp.mtime_ns if stamp else None,
        "updated_at": now,
    }


def _info(row: sa.RowMapping) -> GgufInfo | None:
    if row["architecture"] is None or row["file_size_bytes"] is None:
        return None
    values = {c: row[c] for c in _INFO_COLUMNS}
    values["name"] = values.pop("gguf_name")
    values.update(_memory_fields(row["gguf_memory"]))
    return GgufInfo(**values)


def _memory_json(info: GgufInfo) -> dict[str, Any]:
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name in _MEMORY_FIELDS
        for value in [getattr(info, name)]
    }


def _memory_fields(stored: Any) -> dict[str, Any]:
    """Known keys of the JSON column; rows written before it (NULL) get GgufInfo's defaults."""
    if not isinstance(stored, dict):
        return {}
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in stored.items()
        if name in _MEMORY_FIELDS
    }


def _spec(row: sa.RowMapping) -> ModelSpec:
    return ModelSpec(
        name=row["name"],
        path=Path(row["path"]) if row["path"] is not None else None,
        kind=DeploymentKind(row["kind"]),
        url=row["url"],
        aliases=tuple(row["aliases"]),
        ctx_size=row["ctx_size"],
        parallel=row["parallel"],
        max_gpu_layers=None if row["max_gpu_layers"] < 0 else row["max_gpu_layers"],
        ttl_s=row["ttl_s"],
        extra_args=tuple(row["extra_args"]),
        pinned=row["pinned"],
        embeddings=row["embeddings"],
        info=_info(row),
        source=row["source"],
    )
