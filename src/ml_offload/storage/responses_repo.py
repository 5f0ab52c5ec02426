"""The `responses` table: stored answers of `POST /v1/responses`, each found only by the key
that made it (its owner) and only until it expires."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ml_offload.storage.db import Database
from ml_offload.storage.tables import responses


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    owner: str  # the key's id; "" when auth is off
    created_at: float
    expires_at: float
    response: dict[str, Any]  # the response object, as it was answered
    items: list[dict[str, Any]]  # the conversation the model read (history + input)

    def conversation(self) -> list[dict[str, Any]]:
        """What a follow-up (`previous_response_id`) continues: the items, then the output."""
        return [*self.items, *self.response.get("output", [])]


class ResponseRepository:
    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db = db
        self.ttl_s = ttl_s

    async def save(
        self, owner: str, response: dict[str, Any], items: list[dict[str, Any]], now: float
    ) -> StoredResponse:
        """Store `response` for `owner`, expiring `ttl_s` from `now`; expired rows go first."""
        stored = StoredResponse(response["id"], owner, now, now + self.ttl_s, response, items)
        async with self.db.begin() as conn:
            await conn.execute(responses.delete().where(responses.c.expires_at <= now))
            await conn.execute(
                responses.insert().values(
                    id=stored.id,
                    owner=owner,
                    created_at=now,
                    expires_at=stored.expires_at,
                    response=response,
                    items=items,
                )
            )
        return stored

    async def get(self, owner: str, response_id: str, now: float) -> StoredResponse | None:
        """The response, when `owner` made it and it has not expired."""
        query = sa.select(responses).where(*self._mine(owner, response_id, now))
        async with self.db.begin() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return StoredResponse(
            row["id"],
            row["owner"],
            row["created_at"],
            row["expires_at"],
            row["response"],
            row["items"],
        )

    async def delete(self, owner: str, response_id: str, now: float) -> bool:
        """Delete the response; False when `owner` has none by that id (or it expired)."""
        stmt = responses.delete().where(*self._mine(owner, response_id, now))
        async with self.db.begin() as conn:
            return (await conn.execute(stmt)).rowcount > 0

    @staticmethod
    def _mine(owner: str, response_id: str, now: float) -> tuple[sa.ColumnElement[bool], ...]:
        return (
            responses.c.id == response_id,
            responses.c.owner == owner,
            responses.c.expires_at > now,
        )
