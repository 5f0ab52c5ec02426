"""models: rows belong to the gateway or node that found them (`owner`, part of the key), so
gateways sharing one database never delete or overwrite each other's models

Rows written before have no owner (''): each gateway's next refresh stores its own models under
its name and drops the ownerless rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("owner", sa.String(255), nullable=False, server_default=""))
        batch.drop_constraint("pk_models", type_="primary")
        batch.create_primary_key("pk_models", ["owner", "name"])


def downgrade() -> None:
    # one row per name again: keep the most recently refreshed owner's row of each name
    op.execute(
        "DELETE FROM models WHERE EXISTS (SELECT 1 FROM models AS newer WHERE "
        "newer.name = models.name AND (newer.updated_at > models.updated_at OR "
        "(newer.updated_at = models.updated_at AND newer.owner > models.owner)))"
    )
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("pk_models", type_="primary")
        batch.create_primary_key("pk_models", ["name"])
        batch.drop_column("owner")
