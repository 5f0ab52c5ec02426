"""nodes: one row per fleet node (`mlo serve --role node`), rewritten by each heartbeat; a row
whose lease has passed is a node gone

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("devices", sa.JSON, nullable=False),
        sa.Column("loaded", sa.JSON, nullable=False),
        sa.Column("host_free_bytes", sa.BigInteger, nullable=False),
        sa.Column("queue_depth", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("beat_at", sa.Float, nullable=False),
        sa.Column("lease_s", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_nodes")),
    )


def downgrade() -> None:
    op.drop_table("nodes")
