"""knowledge notes with full-text search (SQLite FTS5, PostgreSQL tsvector), MCP sessions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_SQLITE_FTS = [
    "CREATE VIRTUAL TABLE knowledge_fts USING fts5("
    "title, body, tags, content='knowledge_notes', content_rowid='id', "
    "tokenize='porter unicode61')",
    "CREATE TRIGGER knowledge_ai AFTER INSERT ON knowledge_notes BEGIN "
    "INSERT INTO knowledge_fts(rowid, title, body, tags) "
    "VALUES (new.id, new.title, new.body, new.tags); END",
    "CREATE TRIGGER knowledge_ad AFTER DELETE ON knowledge_notes BEGIN "
    "INSERT INTO knowledge_fts(knowledge_fts, rowid, title, body, tags) "
    "VALUES ('delete', old.id, old.title, old.body, old.tags); END",
    "CREATE TRIGGER knowledge_au AFTER UPDATE ON knowledge_notes BEGIN "
    "INSERT INTO knowledge_fts(knowledge_fts, rowid, title, body, tags) "
    "VALUES ('delete', old.id, old.title, old.body, old.tags); "
    "INSERT INTO knowledge_fts(rowid, title, body, tags) "
    "VALUES (new.id, new.title, new.body, new.tags); END",
]
_PG_FTS = [
    "ALTER TABLE knowledge_notes ADD COLUMN search tsvector GENERATED ALWAYS AS ("
    "setweight(to_tsvector('english', title), 'A') || "
    "setweight(to_tsvector('english', tags), 'B') || "
    "setweight(to_tsvector('english', body), 'C')) STORED",
    "CREATE INDEX ix_knowledge_notes_search ON knowledge_notes USING gin (search)",
]


def upgrade() -> None:
    op.create_table(
        "knowledge_notes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _PG_FTS if postgres else _SQLITE_FTS:
        op.execute(statement)
    op.create_table(
        "mcp_sessions",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("system", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "session_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "session",
            sa.String(255),
            sa.ForeignKey("mcp_sessions.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_session_messages_session", "session_messages", ["session"])


def downgrade() -> None:
    op.drop_table("session_messages")
    op.drop_table("mcp_sessions")
    if op.get_bind().dialect.name != "postgresql":
        for name in ("knowledge_ai", "knowledge_ad", "knowledge_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS knowledge_fts")
    op.drop_table("knowledge_notes")
