"""The knowledge base: notes with title, tags and source, ranked by full-text search."""

from __future__ import annotations

import re
import time
from typing import Any

import sqlalchemy as sa

from ml_offload.errors import InvalidRequest, NotFound
from ml_offload.knowledge.views import Note, SearchHit
from ml_offload.storage.db import Database
from ml_offload.storage.tables import knowledge_notes as notes

_WORD = re.compile(r"\w+", re.UNICODE)
# bm25 column weights: a word in the title counts most, then tags, then the body
_SQLITE_SEARCH = sa.text(
    "SELECT n.id, n.title, n.body, n.tags, n.source, n.created_at, "
    "bm25(knowledge_fts, 10.0, 1.0, 5.0) AS rank "
    "FROM knowledge_fts JOIN knowledge_notes n ON n.id = knowledge_fts.rowid "
    "WHERE knowledge_fts MATCH :query AND (:tag IS NULL OR ' ' || n.tags || ' ' LIKE :tag) "
    "ORDER BY rank LIMIT :limit"
)
_PG_SEARCH = sa.text(
    "SELECT n.id, n.title, n.body, n.tags, n.source, n.created_at, "
    "ts_rank_cd(n.search, q) AS rank "
    "FROM knowledge_notes n, websearch_to_tsquery('english', :query) q "
    "WHERE n.search @@ q AND (CAST(:tag AS text) IS NULL OR ' ' || n.tags || ' ' LIKE :tag) "
    "ORDER BY rank DESC LIMIT :limit"
)


def clean_tags(tags: list[str]) -> list[str]:
    """Tags as stored: lower case, one word each (`-`, `_`, `.` kept), no repeats."""
    out: list[str] = []
    for tag in tags:
        t = tag.strip().lower()
        if not t or not re.fullmatch(r"[\w.\-]+", t):
            raise InvalidRequest(f"tag {tag!r}: use one word (letters, digits, - _ .) per tag")
        if t not in out:
            out.append(t)
    return out


def fts5_query(text: str) -> str:
    """The words of `text` as an FTS5 query that matches notes holding all of them (each word
    quoted, so no FTS5 syntax in the caller's text can fail or change the query)."""
    words = _WORD.findall(text)
    if not words:
        raise InvalidRequest("query: give at least one word to search for")
    return " ".join(f'"{w}"' for w in words)


class KnowledgeBase:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, title: str, body: str, tags: list[str], source: str | None = None) -> Note:
        if not title.strip():
            raise InvalidRequest("title: give the note a title")
        tags = clean_tags(tags)
        row = {
            "title": title.strip(),
            "body": body,
            "tags": " ".join(tags),
            "source": source,
            "created_at": time.time(),
        }
        async with self.db.begin() as conn:
            result = await conn.execute(notes.insert().values(**row).returning(notes.c.id))
            note_id = int(result.scalar_one())
        return _note({**row, "id": note_id})

    async def search(
        self, query: str, *, tag: str | None = None, limit: int = 10
    ) -> list[SearchHit]:
        postgres = self.db.dialect == "postgresql"
        params: dict[str, Any] = {
            "query": " ".join(_WORD.findall(query)) if postgres else fts5_query(query),
            "tag": f"% {clean_tags([tag])[0]} %" if tag else None,
            "limit": limit,
        }
        if postgres and not params["query"]:
            raise InvalidRequest("query: give at least one word to search for")
        async with self.db.begin() as conn:
            rows = (await conn.execute(_PG_SEARCH if postgres else _SQLITE_SEARCH, params)).all()
        return [
            SearchHit(note=_note(r._mapping), score=float(r.rank) if postgres else -float(r.rank))
            for r in rows
        ]

    async def list(self, *, tag: str | None = None, limit: int = 50) -> list[Note]:
        stmt = sa.select(notes).order_by(notes.c.id.desc()).limit(limit)
        if tag:
            like = f"% {clean_tags([tag])[0]} %"
            stmt = stmt.where((" " + notes.c.tags + " ").like(like))
        async with self.db.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_note(r._mapping) for r in rows]

    async def get(self, note_id: int) -> Note:
        async with self.db.begin() as conn:
            row = (await conn.execute(sa.select(notes).where(notes.c.id == note_id))).first()
        if row is None:
            raise NotFound(f"no note {note_id}; list_knowledge shows the notes there are")
        return _note(row._mapping)

    async def delete(self, note_id: int) -> Note:
        note = await self.get(note_id)
        async with self.db.begin() as conn:
            await conn.execute(notes.delete().where(notes.c.id == note_id))
        return note


def _note(row: Any) -> Note:
    return Note(
        id=row["id"],
        title=row["title"],
        body=row["body"],
        tags=row["tags"].split() if row["tags"] else [],
        source=row["source"],
        created_at=row["created_at"],
    )
