"""A run's fingerprint (the same results recorded twice are one run) and the index the trend
query reads (a cell's runs by target, version and check).

Revision ID: r0002
Revises: r0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0002"
down_revision = "r0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("fingerprint", sa.String(64), nullable=True))
        runs.create_index("ix_runs_fingerprint", ["fingerprint"])
    op.create_index("ix_cells_trend", "cells", ["target", "version", "check_name"])


def downgrade() -> None:
    op.drop_index("ix_cells_trend", table_name="cells")
    with op.batch_alter_table("runs") as runs:
        runs.drop_index("ix_runs_fingerprint")
        runs.drop_column("fingerprint")
