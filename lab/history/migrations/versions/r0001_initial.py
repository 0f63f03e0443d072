"""The history's tables: runs, their facts, their cells and the cells' figures.

Revision ID: r0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("matrix_hash", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_runs"),
        sa.UniqueConstraint("run_id", name="uq_runs_run_id"),
    )
    op.create_index("ix_runs_matrix_hash", "runs", ["matrix_hash"])
    op.create_table(
        "run_facts",
        sa.Column("run_pk", sa.Integer, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("run_pk", "key", name="pk_run_facts"),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.pk"], name="fk_run_facts_run_pk_runs", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "cells",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_pk", sa.Integer, nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("check_name", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("rebase_from", sa.String(128), nullable=False),
        sa.Column("platform", sa.String(64), nullable=False),
        sa.Column("evidence", sa.String(16), nullable=False),
        sa.Column("tier", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accel", sa.String(16), nullable=True),
        sa.Column("failed_phase", sa.String(64), nullable=True),
        sa.Column("failed_rules", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_cells"),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.pk"], name="fk_cells_run_pk_runs", ondelete="CASCADE"
        ),
        sa.UniqueConstraint(
            "run_pk",
            "target",
            "version",
            "check_name",
            "channel",
            "rebase_from",
            name="uq_cells_run_pk_target_version_check_name_channel_rebase_from",
        ),
    )
    op.create_table(
        "figures",
        sa.Column("cell_pk", sa.Integer, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("cell_pk", "name", name="pk_figures"),
        sa.ForeignKeyConstraint(
            ["cell_pk"], ["cells.pk"], name="fk_figures_cell_pk_cells", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    for table in ("figures", "cells", "run_facts", "runs"):
        op.drop_table(table)
