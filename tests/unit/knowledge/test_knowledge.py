"""Knowledge notes and sessions on SQLite (FTS5, bm25) and, when `MLO_TEST_POSTGRES_URL` is set,
PostgreSQL (tsvector, ts_rank_cd): the same ranked search on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ml_offload.errors import InvalidRequest, NotFound
from ml_offload.knowledge.notes import KnowledgeBase, fts5_query
from ml_offload.knowledge.sessions import SessionStore
from ml_offload.storage.db import Database
from tests.unit.storage.test_db import BACKENDS, database_url, reset


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    url = database_url(request.param, tmp_path)
    if request.param == "postgresql":
        await reset(url)
    database = await Database.open(url)
    yield database
    await database.close()


async def test_search_ranks_title_matches_first_and_filters_by_tag(db: Database) -> None:
    kb = KnowledgeBase(db)
    body_only = await kb.save("Deploy notes", "the cache eviction happens nightly", ["ops"])
    in_title = await kb.save("Cache eviction policy", "LRU with a TTL of one hour", ["design"])
    await kb.save("Unrelated", "nothing to see", ["ops"])

    hits = await kb.search("cache eviction")
    assert [h.note.id for h in hits] == [in_title.id, body_only.id]
    assert hits[0].score > hits[1].score > 0

    tagged = await kb.search("eviction", tag="ops")
    assert [h.note.id for h in tagged] == [body_only.id]
    assert (await kb.search("nonexistentword")) == []


async def test_words_with_search_syntax_are_plain_words(db: Database) -> None:
    kb = KnowledgeBase(db)
    note = await kb.save("Quotes", 'he said "NEAR" AND (or) * stars', ["x"])
    hits = await kb.search('"NEAR" AND (or) *')
    assert [h.note.id for h in hits] == [note.id]
    with pytest.raises(InvalidRequest, match="at least one word"):
        await kb.search("  ***  ")


async def test_list_and_delete_update_the_index(db: Database) -> None:
    kb = KnowledgeBase(db)
    a = await kb.save("alpha note", "text", ["one"])
    b = await kb.save("beta note", "text", ["two"], source="https://example.invalid/b")
    assert [n.id for n in await kb.list()] == [b.id, a.id]
    assert [n.id for n in await kb.list(tag="one")] == [a.id]
    assert (await kb.delete(a.id)).title == "alpha note"
    assert [h.note.id for h in await kb.search("note")] == [b.id]
    with pytest.raises(NotFound, match="list_knowledge"):
        await kb.delete(a.id)


def test_bad_tags_say_what_to_use() -> None:
    with pytest.raises(InvalidRequest, match="one word"):
        from ml_offload.knowledge.notes import clean_tags

        clean_tags(["two words"])
    assert fts5_query("a-b c") == '"a" "b" "c"'


async def test_sessions_keep_their_messages_in_order(db: Database) -> None:
    store = SessionStore(db)
    await store.create("review", "smollm2", system="be brief")
    await store.append("review", ("user", "hi"), ("assistant", "hello"))
    await store.append("review", ("user", "again"))
    history = await store.history("review")
    assert [(m.role, m.content) for m in history] == [
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "again"),
    ]
    assert [m.content for m in await store.history("review", limit=1)] == ["again"]
    with pytest.raises(InvalidRequest, match="exists"):
        await store.create("review", "smollm2")
    with pytest.raises(NotFound, match="create_session"):
        await store.history("missing")
