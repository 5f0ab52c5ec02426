"""nodes: where a node is reached (`url`) and the models it serves (`served`), for gateways
that route across the fleet

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("url", sa.String(2048), nullable=True))
        batch.add_column(sa.Column("served", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("served")
        batch.drop_column("url")
