"""What the knowledge and session stores hand out: typed views the MCP tools return."""

from __future__ import annotations

from pydantic import BaseModel


class Note(BaseModel):
    id: int
    title: str
    body: str
    tags: list[str]
    source: str | None
    created_at: float  # unix seconds


class SearchHit(BaseModel):
    note: Note
    score: float  # higher is more relevant (bm25 on SQLite, ts_rank_cd on PostgreSQL)


class SessionInfo(BaseModel):
    name: str
    model: str
    system: str | None
    created_at: float


class SessionMessage(BaseModel):
    role: str  # system, user or assistant
    content: str
    created_at: float
