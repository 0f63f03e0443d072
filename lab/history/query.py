"""Reading the history back: runs, a run's cells, a cell's runs, and a figure's trend.

Runs are ordered by when they stopped (then by when they were recorded). ``figure_trend`` is
the query the report's trend plot reads: the last N runs of one cell with one figure each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, select

from lab.history import schema
from lab.history.cells import CellKey
from lab.history.database import History, HistoryError

runs_t, cells_t, figures_t, facts_t = schema.runs, schema.cells, schema.figures, schema.run_facts


def utc(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes (UTC, as written); PostgreSQL aware ones."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class RunRow:
    """A recorded run, with its facts and how many of its cells ended how."""

    pk: int
    run_id: str
    kind: str
    matrix_hash: str
    started_at: datetime
    stopped_at: datetime
    recorded_at: datetime
    facts: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self.statuses.items()))
        return f"{self.run_id} ({self.kind}, {self.stopped_at:%Y-%m-%d %H:%M} UTC, {counts})"


@dataclass(frozen=True)
class CellRow:
    """One cell of one run: its newest result's outcome and its figures."""

    key: CellKey
    platform: str
    evidence: str
    tier: int
    status: str
    message: str
    stopped_at: datetime
    accel: str | None
    failed_phase: str | None
    failed_rules: str
    attempts: int
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status not in ("passed", "skipped")


@dataclass(frozen=True)
class TrendPoint:
    """One run of a cell, for a trend plot: ``value`` is None where the run lacked the figure
    (a boot that never got ready has no ready_s)."""

    run_id: str
    stopped_at: datetime
    value: float | None
    status: str


def _run_rows(db: Connection, query: Select[Any]) -> list[RunRow]:
    found = db.execute(query).all()
    pks = [row.pk for row in found]
    facts: dict[int, dict[str, str]] = {pk: {} for pk in pks}
    statuses: dict[int, Counter[str]] = {pk: Counter() for pk in pks}
    if pks:
        for fact in db.execute(select(facts_t).where(facts_t.c.run_pk.in_(pks))):
            facts[fact.run_pk][fact.key] = fact.value
        for cell in db.execute(
            select(cells_t.c.run_pk, cells_t.c.status).where(cells_t.c.run_pk.in_(pks))
        ):
            statuses[cell.run_pk][cell.status] += 1
    return [
        RunRow(
            row.pk,
            row.run_id,
            row.kind,
            row.matrix_hash,
            utc(row.started_at),
            utc(row.stopped_at),
            utc(row.recorded_at),
            facts[row.pk],
            dict(statuses[row.pk]),
        )
        for row in found
    ]


def newest_first(query: Select[Any]) -> Select[Any]:
    return query.order_by(runs_t.c.stopped_at.desc(), runs_t.c.pk.desc())


def list_runs(
    history: History,
    *,
    kind: str | None = None,
    matrix_hash: str | None = None,
    limit: int | None = None,
) -> list[RunRow]:
    """The recorded runs, newest first (of one kind, of one matrix)."""
    query = select(runs_t)
    if kind:
        query = query.where(runs_t.c.kind == kind)
    if matrix_hash:
        query = query.where(runs_t.c.matrix_hash == matrix_hash)
    query = newest_first(query)
    if limit:
        query = query.limit(limit)
    with history.transaction() as db:
        return _run_rows(db, query)


def find_run(history: History, run_id: str) -> RunRow:
    with history.transaction() as db:
        found = _run_rows(db, select(runs_t).where(runs_t.c.run_id == run_id))
    if not found:
        raise HistoryError(
            f"{history.location.shown}: no run {run_id!r} is recorded; "
            "`ucvm-lab history --runs` lists them",
            2,
        )
    return found[0]


def previous_run(history: History, run: RunRow) -> RunRow | None:
    """The run before ``run`` of the same matrix (hash) and kind, or None: what it is
    compared with."""
    before = (runs_t.c.stopped_at < run.stopped_at) | (
        (runs_t.c.stopped_at == run.stopped_at) & (runs_t.c.pk < run.pk)
    )
    query = newest_first(
        select(runs_t).where(
            runs_t.c.matrix_hash == run.matrix_hash, runs_t.c.kind == run.kind, before
        )
    ).limit(1)
    with history.transaction() as db:
        found = _run_rows(db, query)
    return found[0] if found else None


def _cell_rows(db: Connection, where: Any) -> list[tuple[int, CellRow]]:
    """(run pk, cell) for the cells ``where`` selects, with their figures."""
    found = db.execute(select(cells_t).where(where)).all()
    figures: dict[int, dict[str, float]] = {row.pk: {} for row in found}
    pks = list(figures)
    for start in range(0, len(pks), 500):  # stay below the drivers' parameter limits
        chunk = pks[start : start + 500]
        for figure in db.execute(select(figures_t).where(figures_t.c.cell_pk.in_(chunk))):
            figures[figure.cell_pk][figure.name] = figure.value
    return [
        (
            row.run_pk,
            CellRow(
                CellKey(row.target, row.version, row.check_name, row.channel, row.rebase_from),
                row.platform,
                row.evidence,
                row.tier,
                row.status,
                row.message,
                utc(row.stopped_at),
                row.accel,
                row.failed_phase,
                row.failed_rules,
                row.attempts,
                figures[row.pk],
            ),
        )
        for row in found
    ]


def run_cells(history: History, run: RunRow) -> dict[CellKey, CellRow]:
    """Every cell of ``run``, by its key."""
    with history.transaction() as db:
        return {cell.key: cell for _, cell in _cell_rows(db, cells_t.c.run_pk == run.pk)}


def cell_history(
    history: History, pattern: str, *, last: int = 20, kind: str | None = None
) -> list[tuple[RunRow, CellRow]]:
    """The cells whose name matches ``pattern`` (lab.history.cells), in each of the last
    ``last`` runs (of ``kind``) that had one; oldest run first."""
    chosen = list(reversed(list_runs(history, kind=kind)))
    by_pk = {run.pk: run for run in chosen}
    order = {run.pk: i for i, run in enumerate(chosen)}
    where: list[ColumnElement[bool]] = [cells_t.c.run_pk.in_(by_pk)]
    target = pattern.split("/")[0]
    if target and not any(c in target for c in "*?["):  # most patterns name it: narrow
        where.append(cells_t.c.target == target)
    with history.transaction() as db:
        found = [
            (by_pk[run_pk], cell)
            for run_pk, cell in _cell_rows(db, and_(*where))
            if cell.key.matches(pattern)
        ]
    ran = sorted({run.pk for run, _ in found}, key=order.__getitem__)
    kept = set(ran[-last:]) if last > 0 else set(ran)
    return sorted(
        ((run, cell) for run, cell in found if run.pk in kept),
        key=lambda pair: (order[pair[0].pk], pair[1].key),
    )


def figure_trend(
    history: History,
    *,
    target: str,
    version: str,
    check: str,
    figure: str,
    last: int = 10,
    kind: str | None = "nightly",
    channel: str = "",
    rebase_from: str = "",
    matrix_hash: str | None = None,
) -> list[TrendPoint]:
    """The last ``last`` runs (of ``kind``; None: any) of the cell (target, version, check,
    and channel or rebase FROM where the check has one): each run's id, when it stopped, the
    cell's ``figure`` (None where it lacked it) and its status; oldest first, for a plot."""
    query = (
        select(
            runs_t.c.run_id,
            runs_t.c.stopped_at,
            cells_t.c.status,
            figures_t.c.value,
        )
        .join(cells_t, cells_t.c.run_pk == runs_t.c.pk)
        .outerjoin(figures_t, and_(figures_t.c.cell_pk == cells_t.c.pk, figures_t.c.name == figure))
        .where(
            cells_t.c.target == target,
            cells_t.c.version == version,
            cells_t.c.check_name == check,
            cells_t.c.channel == channel,
            cells_t.c.rebase_from == rebase_from,
        )
    )
    if kind:
        query = query.where(runs_t.c.kind == kind)
    if matrix_hash:
        query = query.where(runs_t.c.matrix_hash == matrix_hash)
    query = newest_first(query).limit(last)
    with history.transaction() as db:
        rows = db.execute(query).all()
    return [TrendPoint(r.run_id, utc(r.stopped_at), r.value, r.status) for r in reversed(rows)]


def known_cells(history: History, runs: Iterable[RunRow]) -> Sequence[str]:
    """The names of the cells of ``runs`` (for a message when a pattern matches none)."""
    pks = [run.pk for run in runs]
    with history.transaction() as db:
        return sorted({cell.key.name for _, cell in _cell_rows(db, cells_t.c.run_pk.in_(pks))})
