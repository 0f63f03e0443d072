"""The history's tables, as SQLAlchemy Core sees them (the migrations make them; a test
checks that the two agree, on SQLite and on PostgreSQL).

- ``runs``: one row per recorded run: its id (lab.run's, or UCVM_RUN_ID), its kind (nightly,
  test, gate, report), the sha256 of its matrix.yaml, when it started and stopped, and the
  fingerprint of its results (a second recording of the same results is refused quietly).
- ``run_facts``: free-form key/value facts of a run: the host (name, CPU count, kernel,
  accelerator, QEMU and libvirt versions, other VMs running), the lab's commit, CI ids.
- ``cells``: one row per cell of a run (target, version, check, and the channel or the
  rebase's FROM; '' when the check has none): the newest result's outcome, and how many
  results the cell had (a rerun makes two).
- ``figures``: a cell's figures (name -> number: ready_s, phase_s.repo, fetched_bytes, ...).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

runs = Table(
    "runs",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("matrix_hash", String(64), nullable=False, index=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("stopped_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("fingerprint", String(64), nullable=True, index=True),
)

run_facts = Table(
    "run_facts",
    metadata,
    Column("run_pk", Integer, ForeignKey("runs.pk", ondelete="CASCADE"), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

cells = Table(
    "cells",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("run_pk", Integer, ForeignKey("runs.pk", ondelete="CASCADE"), nullable=False),
    Column("target", String(128), nullable=False),
    Column("version", String(128), nullable=False),
    Column("check_name", String(64), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("rebase_from", String(128), nullable=False),
    Column("platform", String(64), nullable=False),
    Column("evidence", String(16), nullable=False),
    Column("tier", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("stopped_at", DateTime(timezone=True), nullable=False),
    Column("accel", String(16), nullable=True),
    Column("failed_phase", String(64), nullable=True),
    Column("failed_rules", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    UniqueConstraint("run_pk", "target", "version", "check_name", "channel", "rebase_from"),
    Index("ix_cells_trend", "target", "version", "check_name"),
)

figures = Table(
    "figures",
    metadata,
    Column("cell_pk", Integer, ForeignKey("cells.pk", ondelete="CASCADE"), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("value", Float, nullable=False),
)
