"""The `nodes` table: each fleet node's latest heartbeat (one row per node name)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ml_offload.domain import NodeBeat, NodeDevice, ServedModel
from ml_offload.storage.db import Database
from ml_offload.storage.tables import nodes


class NodeRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def beat(self, beat: NodeBeat) -> None:
        """Write `beat` as its node's row: an insert the first time, then an update (a node
        back after a restart takes its row again, never a second one)."""
        insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        stmt = insert(nodes)
        stmt = stmt.on_conflict_do_update(
            index_elements=[nodes.c.name],
            set_={c.name: stmt.excluded[c.name] for c in nodes.columns if not c.primary_key},
        )
        async with self.db.begin() as conn:
            await conn.execute(stmt, [_row(beat)])

    async def leave(self, name: str, at: float) -> None:
        """A node stopping cleanly: its lease ends now, so it is shown gone at once."""
        stmt = nodes.update().where(nodes.c.name == name).values(beat_at=at, lease_s=0.0)
        async with self.db.begin() as conn:
            await conn.execute(stmt)

    async def all(self) -> list[NodeBeat]:
        async with self.db.begin() as conn:
            rows = (await conn.execute(sa.select(nodes).order_by(nodes.c.name))).mappings()
            return [_beat(r) for r in rows]


def _row(b: NodeBeat) -> dict[str, Any]:
    return {
        "name": b.name,
        "role": b.role,
        "devices": [asdict(d) for d in b.devices],
        "loaded": list(b.loaded),
        "host_free_bytes": b.host_free_bytes,
        "queue_depth": b.queue_depth,
        "started_at": b.started_at,
        "beat_at": b.beat_at,
        "lease_s": b.lease_s,
        "url": b.url,
        "served": [asdict(m) for m in b.served],
    }


def _beat(r: Any) -> NodeBeat:
    return NodeBeat(
        name=r["name"],
        role=r["role"],
        devices=tuple(NodeDevice(**d) for d in r["devices"]),
        loaded=tuple(r["loaded"]),
        host_free_bytes=r["host_free_bytes"],
        queue_depth=r["queue_depth"],
        started_at=r["started_at"],
        beat_at=r["beat_at"],
        lease_s=r["lease_s"],
        url=r["url"],
        served=tuple(_served(m) for m in r["served"] or ()),
    )


def _served(m: dict[str, Any]) -> ServedModel:
    return ServedModel(m["name"], tuple(m.get("aliases") or ()), int(m.get("estimate_bytes") or 0))
