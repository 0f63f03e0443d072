"""Alembic's environment: run by ``alembic.command.upgrade`` from lab.history.database, which
hands over an open connection (there is no alembic.ini: the Config is built in code)."""

from __future__ import annotations

from alembic import context

from lab.history.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "lab/history/migrations runs from lab.history.database.open_history (it passes the "
        "connection); there is no alembic.ini: run `ucvm-lab history --runs` to migrate"
    )
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
