"""models: the model registry

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("aliases", sa.JSON, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("ctx_size", sa.Integer, nullable=False),
        sa.Column("parallel", sa.Integer, nullable=False),
        sa.Column("gpu_layers", sa.Integer, nullable=False),
        sa.Column("ttl_s", sa.Float, nullable=False),
        sa.Column("pinned", sa.Boolean, nullable=False),
        sa.Column("embeddings", sa.Boolean, nullable=False),
        sa.Column("extra_args", sa.JSON, nullable=False),
        sa.Column("architecture", sa.String(64), nullable=True),
        sa.Column("gguf_name", sa.Text, nullable=True),
        sa.Column("parameters", sa.BigInteger, nullable=True),
        sa.Column("quantization", sa.String(32), nullable=True),
        sa.Column("context_length", sa.Integer, nullable=True),
        sa.Column("block_count", sa.Integer, nullable=True),
        sa.Column("head_count", sa.Integer, nullable=True),
        sa.Column("head_count_kv", sa.Integer, nullable=True),
        sa.Column("embedding_length", sa.Integer, nullable=True),
        sa.Column("file_size_bytes", sa.BigInteger, nullable=True),
        sa.Column("stat_size_bytes", sa.BigInteger, nullable=True),
        sa.Column("stat_mtime_ns", sa.BigInteger, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_models")),
    )
    op.create_index("ix_models_path", "models", ["path"])


def downgrade() -> None:
    op.drop_index("ix_models_path", table_name="models")
    op.drop_table("models")
