"""Stored answers of /v1/responses: found only by their owner, gone once expired (SQLite, and
PostgreSQL when `MLO_TEST_POSTGRES_URL` is set)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ml_offload.storage import Database
from ml_offload.storage.responses_repo import ResponseRepository
from tests.unit.storage.test_db import BACKENDS, database_url, reset

TTL_S = 100.0
OUTPUT = [{"type": "message", "id": "msg_2", "role": "assistant", "content": []}]
ITEMS = [{"type": "message", "id": "msg_1", "role": "user", "content": []}]


def response(resp_id: str) -> dict[str, Any]:
    return {"id": resp_id, "object": "response", "output": OUTPUT}


@pytest.fixture(params=BACKENDS)
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResponseRepository]:
    url = database_url(request.param, tmp_path)
    if request.param == "postgresql":
        await reset(url)
    db = await Database.open(url)
    yield ResponseRepository(db, TTL_S)
    await db.close()


async def test_saved_then_found_by_its_owner_only(repo: ResponseRepository) -> None:
    await repo.save("key1", response("resp_a"), ITEMS, now=1000.0)
    found = await repo.get("key1", "resp_a", now=1001.0)
    assert found is not None and found.response == response("resp_a")
    assert found.items == ITEMS and found.expires_at == 1000.0 + TTL_S
    assert found.conversation() == [*ITEMS, *OUTPUT]
    assert await repo.get("key2", "resp_a", now=1001.0) is None
    assert await repo.get("key1", "resp_b", now=1001.0) is None
    assert not await repo.delete("key2", "resp_a", now=1001.0)
    assert await repo.delete("key1", "resp_a", now=1001.0)
    assert await repo.get("key1", "resp_a", now=1001.0) is None
    assert not await repo.delete("key1", "resp_a", now=1001.0)


async def test_expired_responses_are_not_found_and_are_purged(repo: ResponseRepository) -> None:
    await repo.save("", response("resp_old"), ITEMS, now=1000.0)
    assert await repo.get("", "resp_old", now=1000.0 + TTL_S - 1) is not None
    assert await repo.get("", "resp_old", now=1000.0 + TTL_S) is None
    assert not await repo.delete("", "resp_old", now=1000.0 + TTL_S)
    await repo.save("", response("resp_new"), ITEMS, now=1000.0 + TTL_S)  # purges the old row
    assert await repo.get("", "resp_old", now=1000.0) is None
