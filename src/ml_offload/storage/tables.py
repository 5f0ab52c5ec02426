"""The schema, as SQLAlchemy Core tables. Alembic migrations in `migrations/` create it."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

models = sa.Table(
    "models",
    metadata,
    # The gateway or node that found the model (`storage.node`): gateways sharing one database
    # each keep their own rows, and a refresh deletes only its own.
    sa.Column("owner", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("path", sa.Text, nullable=True),
    sa.Column("url", sa.Text, nullable=True),
    sa.Column("kind", sa.String(16), nullable=False, server_default="llamacpp"),
    sa.Column("aliases", sa.JSON, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("ctx_size", sa.Integer, nullable=False),
    sa.Column("parallel", sa.Integer, nullable=False),
    sa.Column("max_gpu_layers", sa.Integer, nullable=False),  # the configured cap; -1: none
    sa.Column("ttl_s", sa.Float, nullable=False),
    sa.Column("pinned", sa.Boolean, nullable=False),
    sa.Column("embeddings", sa.Boolean, nullable=False),
    sa.Column("extra_args", sa.JSON, nullable=False),
    # What the GGUF header says (NULL for external models and unreadable files).
    sa.Column("architecture", sa.String(64), nullable=True),
    sa.Column("gguf_name", sa.Text, nullable=True),
    sa.Column("parameters", sa.BigInteger, nullable=True),
    sa.Column("quantization", sa.String(32), nullable=True),
    sa.Column("context_length", sa.Integer, nullable=True),
    sa.Column("block_count", sa.Integer, nullable=True),
    sa.Column("head_count", sa.Integer, nullable=True),
    sa.Column("head_count_kv", sa.Integer, nullable=True),
    sa.Column("embedding_length", sa.Integer, nullable=True),
    # The rest of GgufInfo (per-layer weight bytes, head sizes, window, experts) as JSON.
    sa.Column("gguf_memory", sa.JSON(none_as_null=True), nullable=True),
    # os.stat() of `path` when the metadata was read, so a rescan skips unchanged files
    # (file_size_bytes above counts every shard of a split model; stat_size_bytes the first).
    sa.Column("file_size_bytes", sa.BigInteger, nullable=True),
    sa.Column("stat_size_bytes", sa.BigInteger, nullable=True),
    sa.Column("stat_mtime_ns", sa.BigInteger, nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_models_path", "path"),
)

# API keys: only the SHA-256 of the secret is kept; the key's id (in the key itself) finds the
# row, so each request is one primary-key lookup (revocation is seen by every gateway at once).
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("models", sa.JSON, nullable=False),  # names, aliases or `backend:*`; []: all
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("tpm", sa.Integer, nullable=True),
    sa.Column("cert_subject", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_api_keys_name", "name"),
)

# Knowledge notes (MCP `save_knowledge`/`search_knowledge`); full-text search by an FTS5 table
# (SQLite) or a generated tsvector column (PostgreSQL), both made by migration 0005.
knowledge_notes = sa.Table(
    "knowledge_notes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("tags", sa.Text, nullable=False),  # space-separated, searched with the text
    sa.Column("source", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# MCP sessions: a named conversation with a model, continued across calls and restarts.
mcp_sessions = sa.Table(
    "mcp_sessions",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("system", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

session_messages = sa.Table(
    "session_messages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "session",
        sa.String(255),
        sa.ForeignKey("mcp_sessions.name", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Fleet nodes: each heartbeat rewrites its node's row (one row per name: a node back after a
# restart takes its row again); `beat_at + lease_s` in the past means gone.
nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("devices", sa.JSON, nullable=False),  # [{index, name, total_bytes, free_bytes}]
    sa.Column("loaded", sa.JSON, nullable=False),  # model names
    sa.Column("host_free_bytes", sa.BigInteger, nullable=False),
    sa.Column("queue_depth", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("beat_at", sa.Float, nullable=False),
    sa.Column("lease_s", sa.Float, nullable=False),
    sa.Column("url", sa.String(2048), nullable=True),  # where gateways reach it
    sa.Column("served", sa.JSON, nullable=True),  # [{name, aliases, estimate_bytes}]
)

# Stored answers of `POST /v1/responses` (store=true), for `previous_response_id`, GET and
# DELETE: only the key that made one (`owner`, its id; "" with auth off) finds it, until
# `expires_at` (unix time; `storage.responses_ttl_s` after it was made).
responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("response", sa.JSON, nullable=False),  # the response object, as answered
    sa.Column("items", sa.JSON, nullable=False),  # the conversation before its output
    sa.Index("ix_responses_expires_at", "expires_at"),
)
