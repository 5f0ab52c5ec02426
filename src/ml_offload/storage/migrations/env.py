"""Alembic environment: runs on the connection that `Database.migrate` passes in.

`Database.open` upgrades to head itself. To write a new revision against a scratch database:
`alembic.command.revision(alembic_config("sqlite:///scratch.db"), autogenerate=True, message=...)`
with `alembic_config` from `ml_offload.storage.db`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from ml_offload.storage.tables import metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_standalone() -> None:
    """Outside `Database.migrate`: a sync URL from the config's `sqlalchemy.url`."""
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url, e.g. alembic_config('sqlite:///scratch.db')")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


_connection = context.config.attributes.get("connection")
if _connection is None:
    _run_standalone()
else:
    _run(_connection)
