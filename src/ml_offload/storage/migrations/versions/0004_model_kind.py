"""models: the deployment kind (`kind`), and `gpu_layers` renamed to what it holds, the
configured cap (`max_gpu_layers`)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="llamacpp")
        )
        batch.alter_column("gpu_layers", new_column_name="max_gpu_layers")
    # rows written before: a model with a URL is elsewhere (the next refresh stores the truth)
    op.execute("UPDATE models SET kind = 'remote' WHERE url IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.alter_column("max_gpu_layers", new_column_name="gpu_layers")
        batch.drop_column("kind")
