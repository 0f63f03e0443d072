"""Recording a run: its results (lab.evidence's ``Result``s) and facts, into the history.

One row per run, one per cell (the newest of its results, with how many there were), one per
figure of the cell, and the run's free-form facts. A run is recorded once: the same results
recorded again (``ucvm-lab report`` on the nightly's results) are found by their fingerprint
and not recorded twice; a run id already recorded with other results is refused.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, select

from lab.evidence import Result, latest_results
from lab.history import schema
from lab.history.cells import CellKey
from lab.history.database import History, HistoryError

RUN_KINDS = ("nightly", "test", "gate", "report")
"""What recorded a run: ``ucvm-lab run`` (nightly), ./test, the gate, ``ucvm-lab report``."""
MESSAGE_CHARS = 500  # of a result's message: its first line, clipped
FACT_CHARS = 2000


@dataclass(frozen=True)
class RunInfo:
    """What the command line knows of a run, beside its results."""

    run_id: str
    kind: str  # one of RUN_KINDS
    matrix_hash: str  # matrix_hash() of the matrix it ran
    started_at: datetime | None = None  # default: the earliest result's stop
    stopped_at: datetime | None = None  # default: the newest result's stop (now if none)
    facts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """What ``record_run`` did: recorded ``run_id`` with ``cells`` cells, or found the same
    results already recorded (``already`` true, ``run_id`` the run that holds them)."""

    run_id: str
    cells: int
    already: bool = False


def matrix_hash(path: Path) -> str:
    """The sha256 of a matrix file's bytes: runs of the same matrix are compared."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(matrix: str, results: Sequence[Result]) -> str:
    """A digest of the matrix and of every result (cell, status, stop)."""
    lines = sorted(
        f"{CellKey.of(r).name}\t{r.status}\t{r.stop.isoformat()}\t{r.message[:200]}"
        for r in results
    )
    return hashlib.sha256("\n".join([matrix, *lines]).encode()).hexdigest()


def accelerators(results: Sequence[Result]) -> str | None:
    """The accelerators that ran the results' guests (``kvm``, ``tcg``, ``kvm,tcg``)."""
    found = sorted({r.accel for r in results if r.accel})
    return ",".join(found) or None


def run_problem(info: RunInfo) -> str | None:
    if info.kind not in RUN_KINDS:
        return f"run kind {info.kind!r}: expected one of {', '.join(RUN_KINDS)}"
    if not info.run_id.strip() or len(info.run_id) > 64:
        return f"run id {info.run_id!r}: expected 1 to 64 characters (UCVM_RUN_ID)"
    if not info.matrix_hash:
        return "no matrix hash"
    return None


def record_run(history: History, info: RunInfo, results: Sequence[Result]) -> Recorded:
    """Record a run and its results; raises HistoryError (one line, the database named)."""
    if problem := run_problem(info):
        raise HistoryError(f"{history.location.shown}: {problem}", 2)
    now = datetime.now(UTC)
    stops = [r.stop for r in results]
    stopped = info.stopped_at or (max(stops) if stops else now)
    started = info.started_at or (min(stops) if stops else stopped)
    facts = {k: str(v)[:FACT_CHARS] for k, v in info.facts.items()}
    if "accel" not in facts and (accel := accelerators(results)):
        facts["accel"] = accel
    digest = fingerprint(info.matrix_hash, results)
    attempts = Counter(CellKey.of(r) for r in results)
    with history.transaction() as db:
        same = db.execute(
            select(schema.runs.c.run_id).where(schema.runs.c.fingerprint == digest)
        ).first()
        if same is not None:
            return Recorded(same.run_id, len(attempts), already=True)
        taken = db.execute(
            select(schema.runs.c.kind, schema.runs.c.stopped_at).where(
                schema.runs.c.run_id == info.run_id
            )
        ).first()
        if taken is not None:
            raise HistoryError(
                f"{history.location.shown}: run {info.run_id} is recorded already (a "
                f"{taken.kind} run, with other results); leave UCVM_RUN_ID unset or give a new id",
                2,
            )
        run_pk = db.scalar(
            insert(schema.runs)
            .returning(schema.runs.c.pk)
            .values(
                run_id=info.run_id,
                kind=info.kind,
                matrix_hash=info.matrix_hash,
                started_at=started,
                stopped_at=stopped,
                recorded_at=now,
                fingerprint=digest,
            )
        )
        if facts:
            db.execute(
                insert(schema.run_facts),
                [{"run_pk": run_pk, "key": k[:64], "value": v} for k, v in sorted(facts.items())],
            )
        for result in latest_results(results):
            key = CellKey.of(result)
            cell_pk = db.scalar(
                insert(schema.cells)
                .returning(schema.cells.c.pk)
                .values(run_pk=run_pk, **cell_row(key, result, attempts[key]))
            )
            figures = [
                {"cell_pk": cell_pk, "name": name[:128], "value": float(value)}
                for name, value in sorted(result.figures.items())
                if math.isfinite(value)
            ]
            if figures:
                db.execute(insert(schema.figures), figures)
    return Recorded(info.run_id, len(attempts))


def cell_row(key: CellKey, result: Result, attempts: int) -> dict[str, object]:
    lines = result.message.strip().splitlines()
    return {
        "target": key.target,
        "version": key.version,
        "check_name": key.check,
        "channel": key.channel,
        "rebase_from": key.rebase_from,
        "platform": result.platform,
        "evidence": result.evidence,
        "tier": result.tier,
        "status": result.status[:16],
        "message": (lines[0].strip() if lines else "")[:MESSAGE_CHARS],
        "stopped_at": result.stop,
        "accel": result.accel,
        "failed_phase": result.failed_phase,
        "failed_rules": ",".join(result.failed_rules),
        "attempts": attempts,
    }
