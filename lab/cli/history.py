"""``ucvm-lab history``: what changed since the last run, a cell's history, the runs; and the
recording that ``run``, ``report`` and ./test do.

ucvm-lab history [--kind K] [--run ID] [--ratio R] [--json]
                               what changed in the newest run (of kind K, or run ID) since the
                               run before it of the same matrix and kind: new failures, fixed
                               cells, cells new or gone, figures that moved by R (1.25) or more
ucvm-lab history CELL [--last N] [--figure F ...] [--kind K] [--json]
                               a cell's outcome and main figures per run; CELL is
                               TARGET/VERSION/CHECK (kvm/newest/boot),
                               TARGET/VERSION/context/CHANNEL, TARGET/FROM..TO/rebase, or a
                               pattern of them (quoted: 'kvm/*/boot')
ucvm-lab history --runs [--kind K] [--last N] [--json]
                               the recorded runs, newest first
ucvm-lab history --record DIR [DIR ...] --kind K [--fact KEY=VALUE ...]
                               record allure-results directories as a run of kind K (./test
                               does this with its results; `run` and `report` do it too)

The history is ``<reports>/history.sqlite`` of the matrix, or the database UCVM_HISTORY_URL
names (postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE, or sqlite:///FILE).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from lab import matrix, proc
from lab.cli.common import REPO, error_exit, number_above, out
from lab.evidence import BOOT_CHECK, Result, ResultsError, latest_results, read_results
from lab.history.cells import pattern_problem
from lab.history.compare import DEFAULT_RATIO, compare, show_value, still_failing
from lab.history.database import History, HistoryError, Location, locate, open_history
from lab.history.host import host_facts
from lab.history.query import (
    CellRow,
    RunRow,
    cell_history,
    figure_trend,
    find_run,
    known_cells,
    list_runs,
    previous_run,
    run_cells,
)
from lab.history.record import RUN_KINDS, RunInfo, matrix_hash, record_run
from lab.run import new_run_id

MAIN_FIGURES = ("ready_s", "fetched_bytes", "cache_bytes", "units_failed")
CI_VARIABLES = ("CI_JOB_ID", "CI_PIPELINE_ID", "CI_JOB_URL", "GITHUB_RUN_ID", "BUILD_URL")
"""Environment variables of CI systems that identify a job; recorded as facts when set."""


@dataclass(frozen=True)
class RunStart:
    """A run as it starts: its id, kind, time and the host's facts then."""

    run_id: str
    kind: str
    started_at: datetime | None = None  # None: from the results (a report of earlier results)
    facts: dict[str, str] = field(default_factory=dict)


def begin_run(kind: str, *, run_id: str | None = None, timed: bool = True) -> RunStart:
    """Taken before a run starts (``ucvm-lab run``: its guests are not yet counted among the
    VMs running); ``timed`` false: the run happened before (its results say when)."""
    facts = host_facts()
    facts |= {name.lower(): os.environ[name] for name in CI_VARIABLES if os.environ.get(name)}
    try:
        commit = proc.run("git", "-C", REPO, "rev-parse", "HEAD", check=False, timeout=10)
    except proc.CommandError:  # no git: the fact is left out
        commit = None
    if commit is not None and commit.returncode == 0 and commit.stdout.strip():
        facts["lab_commit"] = commit.stdout.strip()
    return RunStart(
        run_id or os.environ.get("UCVM_RUN_ID") or new_run_id(),
        kind,
        datetime.now(UTC) if timed else None,
        facts,
    )


def record_results(command: str, dirs: Sequence[Path], lab: matrix.Matrix, start: RunStart) -> int:
    """Record ``dirs`` as the run ``start`` into the matrix's history; 0, or the status of
    the error it printed (its results and report are untouched either way)."""
    try:
        location = locate(lab.settings.reports)
        info = RunInfo(
            start.run_id,
            start.kind,
            matrix_hash(lab.path),
            start.started_at,
            datetime.now(UTC) if start.started_at else None,
            {**start.facts, "matrix": str(lab.path), "versions": ",".join(lab.versions)},
        )
        results = read_results(list(dirs))
        with open_history(location) as history:
            done = record_run(history, info, results)
    except HistoryError as error:
        return error_exit(command, f"the run's history is not recorded: {error}", error.status)
    except (ResultsError, OSError) as error:
        return error_exit(command, f"the run's history is not recorded: {error}", 2)
    if done.already:
        out.print(
            f"history: these results are recorded already, as run {done.run_id} ({location.shown})",
            highlight=False,
        )
    else:
        out.print(
            f"history: run {done.run_id} ({start.kind}, {done.cells} cells) recorded in "
            f"{location.shown}",
            highlight=False,
        )
    return 0


TREND_RUNS = 14  # the trend plot: this run and the 13 nightlies before it


def trend_series(
    lab: matrix.Matrix, dirs: Sequence[Path], run_id: str
) -> dict[str, list[tuple[datetime, float | None, str]]] | None:
    """``ready_s`` of each tier-1 boot cell of this run (``dirs``) over the nightlies of the
    same matrix before it, for the report's trend plot; None (and why, on the terminal) when
    there is no history to read."""
    try:
        results = latest_results(read_results(list(dirs)))
        cells = [r for r in results if r.check == BOOT_CHECK and r.tier == 1 and r.side is None]
        with open_history(locate(lab.settings.reports)) as history:
            series = {
                f"{r.target} {r.version}": [
                    *earlier_points(history, r, lab, run_id),
                    (r.stop, r.figures.get("ready_s"), r.status),
                ]
                for r in cells
            }
    except (HistoryError, ResultsError, OSError) as error:
        out.print(f"[yellow]ucvm-lab report: no trend plot: {error}[/]")
        return None
    return series or None


def earlier_points(
    history: History, result: Result, lab: matrix.Matrix, run_id: str
) -> list[tuple[datetime, float | None, str]]:
    """The cell's ready_s in the nightlies before run ``run_id`` (which may be recorded)."""
    points = figure_trend(
        history, target=result.target, version=result.version, check=BOOT_CHECK,
        figure="ready_s", last=TREND_RUNS, matrix_hash=matrix_hash(lab.path),
    )  # fmt: skip
    return [(p.stopped_at, p.value, p.status) for p in points if p.run_id != run_id][
        -(TREND_RUNS - 1) :
    ]


ratio_value = number_above(1, "a number", "1.25 (by 25%)")
"""argparse's type for --ratio (a figure moved when new/old >= R or <= 1/R): above 1."""


def count_value(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return int(text)


def fact_value(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip() or len(key.strip()) > 64:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE (a key of 1-64 chars)")
    return key.strip(), value


def add_history_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    history = commands.add_parser(
        "history",
        help="what changed since the last run; a cell's history; the runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    history.add_argument("cell", nargs="?", metavar="CELL", help="a cell's runs (see above)")
    history.add_argument("--runs", action="store_true", help="list the recorded runs")
    history.add_argument(
        "--record", nargs="+", metavar="DIR", help="record allure-results DIRs (with --kind)"
    )
    history.add_argument("--json", action="store_true", help="JSON instead of a table")
    history.add_argument("--kind", choices=RUN_KINDS, help="only runs of this kind")
    history.add_argument("--run", metavar="ID", help="the run to compare (default: the newest)")
    history.add_argument(
        "--ratio", type=ratio_value, default=DEFAULT_RATIO,
        help=f"a figure moved when new/old >= R or <= 1/R (default {DEFAULT_RATIO})",
    )  # fmt: skip
    history.add_argument("--last", type=count_value, default=20, help="runs shown (default 20)")
    history.add_argument(
        "--figure", action="append", default=[], help="another figure to show (CELL)"
    )
    history.add_argument(
        "--fact",
        action="append",
        default=[],
        type=fact_value,
        help="KEY=VALUE: a fact of the run (--record)",
    )
    history.set_defaults(func=cmd_history)


def cmd_history(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    if args.record:
        if args.cell or args.runs:
            return error_exit("history", "--record takes DIRs only (no CELL, no --runs)", 2)
        return cmd_record(args, lab, args.record)
    if args.cell and (problem := pattern_problem(args.cell)):
        return error_exit("history", problem, 2)
    try:
        location = locate(lab.settings.reports)
        if location.file is not None and not location.file.exists():
            out.print(f"no history yet: {location.file} does not exist (ucvm-lab run, "
                      "ucvm-lab report and ./test record into it)", highlight=False)  # fmt: skip
            return 0
        with open_history(location) as history:
            if args.runs:
                return show_runs(history, args)
            if args.cell:
                return show_cell(history, args.cell, args)
            return show_changes(history, args)
    except HistoryError as error:
        return error_exit("history", str(error), error.status)


def cmd_record(args: argparse.Namespace, lab: matrix.Matrix, dirs: list[str]) -> int:
    if args.kind is None:
        return error_exit("history", f"--record: give --kind ({', '.join(RUN_KINDS)})", 2)
    start = begin_run(args.kind, timed=False)
    start.facts.update(dict(args.fact))
    return record_results("history", [Path(d) for d in dirs], lab, start)


def run_json(run: RunRow | None) -> dict[str, object] | None:
    if run is None:
        return None
    return {
        "run_id": run.run_id, "kind": run.kind, "matrix_hash": run.matrix_hash,
        "started_at": run.started_at.isoformat(), "stopped_at": run.stopped_at.isoformat(),
        "statuses": run.statuses, "facts": run.facts,
    }  # fmt: skip


def dump(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def show_changes(history: History, args: argparse.Namespace) -> int:
    if args.run:
        run = find_run(history, args.run)
    else:
        newest = list_runs(history, kind=args.kind, limit=1)
        if not newest:
            return nothing_recorded(history.location, args)
        run = newest[0]
    baseline = previous_run(history, run)
    now = run_cells(history, run)
    before = run_cells(history, baseline) if baseline else {}
    changes = compare(before, now, ratio=args.ratio) if baseline else []
    failing = still_failing(before, now)
    if args.json:
        dump({
            "database": history.location.shown, "run": run_json(run),
            "baseline": run_json(baseline), "ratio": args.ratio,
            "changes": [c.as_dict() for c in changes], "still_failing": failing,
        })  # fmt: skip
        return 0
    out.print(f"history: {history.location.shown}\nrun  {run.summary()}", highlight=False)
    if baseline is None:
        out.print(f"the first {run.kind} run of matrix {run.matrix_hash[:12]} recorded: "
                  "nothing to compare it with", highlight=False)  # fmt: skip
        return 0
    out.print(f"vs   {baseline.summary()}", highlight=False)
    if not changes:
        out.print(f"no change in {len(now)} cells (figures by ×{args.ratio:g})")
    else:
        table = Table(title=f"changes (figures moved by ×{args.ratio:g} or more)")
        for column in ("change", "cell", "before", "now", "detail"):
            table.add_column(column)
        for change in changes:
            style = "red" if change.change in ("new failure", "gone") else None
            table.add_row(
                change.change, change.cell, change.before, change.now, change.detail,
                style=style,
            )  # fmt: skip
        out.print(table)
    if failing:
        out.print(f"still failing ({len(failing)}): {', '.join(failing)}", highlight=False)
    return 0


def nothing_recorded(location: Location, args: argparse.Namespace) -> int:
    of = f" of kind {args.kind}" if args.kind else ""
    if args.json:
        dump({"database": location.shown, "run": None, "baseline": None, "changes": []})
    else:
        out.print(f"history: {location.shown}: no run{of} recorded yet", highlight=False)
    return 0


def show_runs(history: History, args: argparse.Namespace) -> int:
    runs = list_runs(history, kind=args.kind, limit=args.last)
    if args.json:
        dump([run_json(run) for run in runs])
        return 0
    if not runs:
        return nothing_recorded(history.location, args)
    table = Table(title=f"runs in {history.location.shown} (newest first)")
    for column in ("run", "kind", "stopped (UTC)", "took", "matrix", "passed", "failed",
                   "skipped", "accel", "host", "other VMs"):  # fmt: skip
        table.add_column(column)
    for run in runs:
        counts = run.statuses
        failed = sum(n for status, n in counts.items() if status not in ("passed", "skipped"))
        took = (run.stopped_at - run.started_at).total_seconds()
        table.add_row(
            run.run_id, run.kind, f"{run.stopped_at:%Y-%m-%d %H:%M}", f"{took / 60:.0f} min",
            run.matrix_hash[:12], str(counts.get("passed", 0)), str(failed),
            str(counts.get("skipped", 0)), run.facts.get("accel", "?"),
            run.facts.get("host", "?"), run.facts.get("vms_running", "?"),
        )  # fmt: skip
    out.print(table)
    return 0


def cell_detail(cell: CellRow) -> str:
    if cell.failed_phase:
        return f"phase {cell.failed_phase}"
    return cell.failed_rules or cell.message


def show_cell(history: History, pattern: str, args: argparse.Namespace) -> int:
    found = cell_history(history, pattern, last=args.last, kind=args.kind)
    if not found:
        newest = list_runs(history, limit=1)
        known = known_cells(history, newest)
        listed = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise HistoryError(
            f"no cell matches {pattern!r} in {history.location.shown}"
            + (f"; the newest run has {listed}" if known else ": no run is recorded yet"),
            2,
        )
    figures = [*MAIN_FIGURES, *(f for f in args.figure if f not in MAIN_FIGURES)]
    if args.json:
        dump([
            {"run": run_json(run), "cell": cell.key.name, "status": cell.status,
             "attempts": cell.attempts, "accel": cell.accel, "detail": cell_detail(cell),
             "figures": cell.figures}
            for run, cell in found
        ])  # fmt: skip
        return 0
    names = {cell.key.name for _, cell in found}
    table = Table(title=f"{pattern} in {history.location.shown} (oldest first)")
    columns = ["run", "kind", "stopped (UTC)", *(["cell"] if len(names) > 1 else []),
               "status", "tries", "accel", *figures, "detail"]  # fmt: skip
    for column in columns:
        table.add_column(column)
    for run, cell in found:
        values = [show_value(f, cell.figures[f]) if f in cell.figures else "-" for f in figures]
        table.add_row(
            run.run_id, run.kind, f"{run.stopped_at:%Y-%m-%d %H:%M}",
            *([cell.key.name] if len(names) > 1 else []), cell.status, str(cell.attempts),
            cell.accel or "-", *values, cell_detail(cell),
            style="red" if cell.failed else None,
        )  # fmt: skip
    out.print(table)
    return 0
