"""The run history (lab/history, `ucvm-lab history`): record, compare, query, and its faults.

Runs are allure-results directories written the way the suites write them (lab.evidence's
label helpers, a boot record attachment for the figures) and read back by read_results. The
schema, record and compare tests run on SQLite and on a real PostgreSQL server (started by
tests/test_history_postgres.py's helper) through one parametrised fixture, ``location``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from lab import cli
from lab.evidence import boot_labels, cell_labels, read_results, rebase_labels
from lab.history.cells import CellKey, pattern_problem
from lab.history.compare import compare
from lab.history.database import (
    HistoryError,
    Location,
    alembic_config,
    head_revision,
    locate,
    make_engine,
    open_history,
    parse_url,
)
from lab.history.host import count_vms, host_facts
from lab.history.query import (
    CellRow,
    cell_history,
    figure_trend,
    list_runs,
    previous_run,
    run_cells,
)
from lab.history.record import RunInfo, matrix_hash, record_run
from lab.history.schema import metadata
from tests.commands import ucvm_lab

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)
DAY = timedelta(days=1)
PLATFORM = {"kvm": "KVM", "vmware": "VMware", "virtualbox": "VirtualBox",
            "openstack": "OpenStack", "hyperv": "Microsoft Hyper-V", "xen": "Xen"}  # fmt: skip


# --- runs written as the suites write them ------------------------------------------------------


def write_result(
    directory: Path,
    target: str,
    *,
    version: str = "newest",
    check: str = "boot",
    status: str = "passed",
    stop: datetime = T0,
    ready_s: float | None = 30.0,
    fetched: int = 50_000_000,
    failed_phase: str | None = None,
    channel: str | None = None,
    rebase_from: str | None = None,
    failed_rules: Sequence[str] = (),
    message: str = "",
) -> None:
    """One allure result of a cell, with a boot record attachment (its figures)."""
    directory.mkdir(parents=True, exist_ok=True)
    labels = cell_labels(
        check=check, target=target, platform=PLATFORM[target], version=version,
        evidence="profile", tier=1, channel=channel, rebase_from=rebase_from,
    )  # fmt: skip
    attachments = []
    uuid = f"{target}-{version}-{check}-{channel}-{int(stop.timestamp())}"
    if status != "skipped":
        labels |= boot_labels(accel="tcg", failed_phase=failed_phase)
        phases: list[dict[str, Any]] = [
            {"name": "start", "guest_s": 0.5, "host_s": 1.0},
            {"name": "repo", "guest_s": 2.0, "host_s": 3.0},
        ]
        if ready_s is not None:
            fields = {"fetched_bytes": str(fetched), "cache_bytes": "4096", "units_failed": "0"}
            phases.append({"name": "ready", "guest_s": 9.5, "host_s": ready_s, "fields": fields})
        (directory / f"{uuid}-record.json").write_text(json.dumps({"phases": phases}))
        attachments = [{"name": "boot-record.json", "source": f"{uuid}-record.json"}]
    if failed_rules:
        labels |= rebase_labels(rebase_from or "", failed_rules)
    result = {
        "name": f"test_{check}[{target}-{version}]",
        "status": status,
        "statusDetails": {"message": message},
        "stop": int(stop.timestamp() * 1000),
        "attachments": attachments,
        "labels": [{"name": name, "value": value} for name, value in labels.items()],
    }
    (directory / f"{uuid}-result.json").write_text(json.dumps(result))


def write_run(directory: Path, variant: str, stop: datetime = T0 + DAY) -> Path:
    """The ``before`` run, or the ``after`` run whose changes the tests expect: kvm's boot
    and the rebase fail (new failures), vmware boots twice as slowly (a figure, after a
    rerun), virtualbox is fixed, openstack is gone, hyperv is new, xen stays skipped, the
    context cell moves within the noise."""
    write_result(directory, "xen", status="skipped", stop=stop, message="Skipped: no Xen")
    context = {"version": "previous", "check": "context", "channel": "nocloud", "stop": stop}
    rebase = {"version": "newest", "check": "rebase", "rebase_from": "previous", "stop": stop}
    if variant == "before":
        write_result(directory, "kvm", stop=stop)
        write_result(directory, "vmware", ready_s=40.0, stop=stop)
        write_result(directory, "virtualbox", status="failed", failed_phase="repo", stop=stop,
                     ready_s=None, message="no ready: phase repo failed")  # fmt: skip
        write_result(directory, "openstack", stop=stop)
        write_result(directory, "kvm", ready_s=180.0, **context)
        write_result(directory, "kvm", **rebase)
    else:
        write_result(directory, "kvm", status="failed", failed_phase="repo", ready_s=None,
                     stop=stop, message="no ready within 240 s")  # fmt: skip
        write_result(directory, "vmware", status="failed", stop=stop - timedelta(minutes=5))
        write_result(directory, "vmware", ready_s=80.0, stop=stop)  # the rerun passed
        write_result(directory, "virtualbox", stop=stop)
        write_result(directory, "hyperv", stop=stop)
        write_result(directory, "kvm", ready_s=180.3, **context)
        write_result(directory, "kvm", status="failed", failed_rules=["R1 config: lost"], **rebase)
    return directory


EXPECTED_CHANGES = [
    ("new failure", "kvm/newest/boot", "passed", "failed", "failed in phase repo"),
    ("new failure", "kvm/previous..newest/rebase", "passed", "failed", "rules R1 failed"),
    ("gone", "openstack/newest/boot", "passed", "", ""),
    ("new cell", "hyperv/newest/boot", "", "passed", ""),
    ("fixed", "virtualbox/newest/boot", "failed", "passed", ""),
    ("figure", "vmware/newest/boot", "40.00 s", "80.00 s", "ready_s ↑ ×2.00"),
]


def lab_copy(tmp_path: Path) -> Path:
    """A copy of matrix.yaml (and known-issues.yaml) whose reports go to tmp_path/out."""
    text_ = (REPO / "matrix.yaml").read_text()
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(re.sub(r"(?m)^(\s+reports:).*$", r"\1 out", text_))
    shutil.copy(REPO / "known-issues.yaml", tmp_path)
    return matrix


def info(run_id: str, kind: str = "nightly", matrix: str = "m1") -> RunInfo:
    return RunInfo(run_id, kind, matrix, facts={"host": "lab-1", "cpu_count": "2"})


# --- one fixture, two databases -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Any]:
    from tests.test_history_postgres import running_postgres  # it imports this module

    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    """An empty history database: an SQLite file, or a new database in a real server."""
    if request.param == "sqlite":
        return parse_url(f"sqlite:///{tmp_path / 'history.sqlite'}", "test")
    server = request.getfixturevalue("pg_server")
    return parse_url(server.url(server.create_database()), "test")


def record_dirs(location: Location, *runs: tuple[str, Path, str]) -> None:
    with open_history(location) as history:
        for run_id, results, kind in runs:
            record_run(history, info(run_id, kind), read_results([results]))


def test_a_new_database_gets_the_newest_schema_which_matches_the_tables(
    location: Location,
) -> None:
    with open_history(location) as history, history.transaction() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision()
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    assert head_revision() == "r0002"


def test_two_runs_are_recorded_and_what_changed_is_found(
    location: Location, tmp_path: Path
) -> None:
    before, after = write_run(tmp_path / "a", "before", T0), write_run(tmp_path / "b", "after")
    record_dirs(location, ("r1", before, "nightly"), ("r2", after, "nightly"))
    with open_history(location) as history:
        newest, oldest = list_runs(history)
        assert (newest.run_id, oldest.run_id) == ("r2", "r1")
        assert newest.stopped_at == T0 + DAY and oldest.started_at == T0
        assert newest.facts == {"host": "lab-1", "cpu_count": "2", "accel": "tcg"}
        assert newest.statuses == {"passed": 4, "failed": 2, "skipped": 1}
        assert previous_run(history, newest) == oldest and previous_run(history, oldest) is None
        cells_before, cells_after = run_cells(history, oldest), run_cells(history, newest)
    changes = compare(cells_before, cells_after)
    assert [(c.change, c.cell, c.before, c.now, c.detail) for c in changes] == EXPECTED_CHANGES
    vmware = cells_after[CellKey("vmware", "newest", "boot")]
    assert (vmware.status, vmware.attempts, vmware.accel) == ("passed", 2, "tcg")
    assert vmware.figures["ready_s"] == 80.0 and vmware.figures["phase_s.repo"] == 1.5
    rebase = cells_after[CellKey("kvm", "newest", "rebase", rebase_from="previous")]
    assert rebase.failed_rules == "R1"


def test_the_same_results_are_recorded_once_and_a_run_id_once(
    location: Location, tmp_path: Path
) -> None:
    before, after = write_run(tmp_path / "a", "before", T0), write_run(tmp_path / "b", "after")
    with open_history(location) as history:
        first = record_run(history, info("r1"), read_results([before]))
        again = record_run(history, info("r9", "report"), read_results([before]))
        assert (first.already, again.already, again.run_id, again.cells) == (False, True, "r1", 7)
        with pytest.raises(HistoryError, match="run r1 is recorded already") as refused:
            record_run(history, info("r1"), read_results([after]))
        assert refused.value.status == 2
        assert [run.run_id for run in list_runs(history)] == ["r1"]


def test_a_cells_history_and_the_trend_query(location: Location, tmp_path: Path) -> None:
    record_dirs(
        location,
        ("r1", write_run(tmp_path / "a", "before", T0), "nightly"),
        ("r2", write_run(tmp_path / "b", "after", T0 + DAY), "nightly"),
        ("t1", write_run(tmp_path / "c", "after", T0 + DAY + timedelta(hours=3)), "test"),
        ("r3", write_run(tmp_path / "d", "before", T0 + 2 * DAY), "nightly"),
    )
    with open_history(location) as history:
        trend = figure_trend(history, target="kvm", version="newest", check="boot",
                             figure="ready_s")  # fmt: skip
        assert [(p.run_id, p.stopped_at, p.value, p.status) for p in trend] == [
            ("r1", T0, 30.0, "passed"),
            ("r2", T0 + DAY, None, "failed"),  # never ready: no ready_s
            ("r3", T0 + 2 * DAY, 30.0, "passed"),
        ]
        last_two = figure_trend(history, target="kvm", version="newest", check="boot",
                                figure="ready_s", last=2, kind=None)  # fmt: skip
        assert [p.run_id for p in last_two] == ["t1", "r3"]
        context = figure_trend(history, target="kvm", version="previous", check="context",
                               channel="nocloud", figure="ready_s")  # fmt: skip
        assert [p.value for p in context] == [180.0, 180.3, 180.0]
        vmware = cell_history(history, "vmware/*/boot", kind="nightly")
        assert [(run.run_id, cell.status, cell.attempts) for run, cell in vmware] == [
            ("r1", "passed", 1), ("r2", "passed", 2), ("r3", "passed", 1),
        ]  # fmt: skip
        assert len(cell_history(history, "kvm/*/*", last=1)) == 3  # boot, context, rebase
        newest_nightly = list_runs(history, kind="nightly")[0]
        assert previous_run(history, newest_nightly).run_id == "r2"  # type: ignore[union-attr]


def test_an_older_known_schema_is_upgraded_keeping_its_runs(location: Location) -> None:
    engine = make_engine(location)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "r0001")
        connection.execute(text(
            "INSERT INTO runs (run_id, kind, matrix_hash, started_at, stopped_at, recorded_at)"
            " VALUES ('old1', 'nightly', 'm1', :t, :t, :t)"
        ), {"t": T0})  # fmt: skip
    engine.dispose()
    with open_history(location) as history:
        with history.transaction() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == "r0002"
            assert connection.execute(text("SELECT fingerprint FROM runs")).all() == [(None,)]
        [old] = list_runs(history)
        assert (old.run_id, old.stopped_at, old.statuses) == ("old1", T0, {})


def test_an_unknown_schema_revision_is_refused(location: Location) -> None:
    open_history(location).close()
    engine = make_engine(location)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'r9999'"))
    engine.dispose()
    with pytest.raises(HistoryError) as refused:
        open_history(location)
    message = str(refused.value)
    assert message.startswith(location.shown + ": ")
    assert "revision 'r9999', which this ucvm-lab does not know (its newest is 'r0002')" in message
    assert "UCVM_HISTORY_URL" in message and refused.value.status == 1


def test_a_database_of_another_program_is_refused(location: Location) -> None:
    engine = make_engine(location)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(HistoryError, match=r"holds tables \(invoices\) but no ucvm-lab history"):
        open_history(location)


# --- the command line ---------------------------------------------------------------------------


def history_cli(matrix: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return ucvm_lab("--matrix", str(matrix), "history", *args, **kw)


def assert_one_line_error(said: subprocess.CompletedProcess[str], status: int) -> str:
    assert said.returncode == status, said.stdout + said.stderr
    assert "Traceback" not in said.stderr
    [line] = said.stderr.splitlines()
    return line


def test_the_command_line_shows_what_changed_a_cells_history_and_the_runs(
    tmp_path: Path,
) -> None:
    matrix = lab_copy(tmp_path)
    before, after = write_run(tmp_path / "a", "before", T0), write_run(tmp_path / "b", "after")
    empty = history_cli(matrix)
    assert empty.returncode == 0 and "no history yet" in empty.stdout
    for results in (before, after):
        recorded = history_cli(matrix, "--record", str(results), "--kind", "nightly",
                               "--fact", "loader_sha256=abc123")  # fmt: skip
        assert recorded.returncode == 0, recorded.stderr
    assert (tmp_path / "out" / "history.sqlite").is_file()
    again = history_cli(matrix, "--record", str(after), "--kind", "report")
    assert again.returncode == 0 and "recorded already, as run" in again.stdout

    changes = history_cli(matrix)
    assert changes.returncode == 0, changes.stderr
    rows = {line.split("│")[2].strip(): line for line in changes.stdout.splitlines()
            if line.startswith("│")}  # fmt: skip
    assert "new failure" in rows["kvm/newest/boot"] and "phase repo" in rows["kvm/newest/boot"]
    assert (
        "ready_s ↑ ×2.00" in rows["vmware/newest/boot"] and "80.00 s" in rows["vmware/newest/boot"]
    )
    assert "fixed" in rows["virtualbox/newest/boot"] and "gone" in rows["openstack/newest/boot"]
    assert "xen/newest/boot" not in rows and "kvm/previous/context/nocloud" not in rows

    as_json = json.loads(history_cli(matrix, "--json").stdout)
    assert [(c["change"], c["cell"]) for c in as_json["changes"]] == [
        (change, cell) for change, cell, *_ in EXPECTED_CHANGES
    ]
    assert as_json["baseline"]["stopped_at"] == T0.isoformat()
    assert as_json["run"]["facts"]["loader_sha256"] == "abc123"
    assert as_json["run"]["facts"]["cpu_count"] == str(host_facts()["cpu_count"])
    assert as_json["run"]["matrix_hash"] == matrix_hash(matrix)
    relaxed = json.loads(history_cli(matrix, "--json", "--ratio", "3").stdout)
    assert "figure" not in [c["change"] for c in relaxed["changes"]]

    cell = history_cli(matrix, "kvm/newest/boot")
    lines = [line for line in cell.stdout.splitlines() if line.startswith("│")]
    assert len(lines) == 2 and "passed" in lines[0] and "30.00 s" in lines[0]
    assert "failed" in lines[1] and "phase repo" in lines[1]
    runs = history_cli(matrix, "--runs", "--json")
    assert [run["statuses"] for run in json.loads(runs.stdout)] == [
        {"passed": 4, "failed": 2, "skipped": 1}, {"passed": 5, "failed": 1, "skipped": 1},
    ]  # fmt: skip

    unknown = assert_one_line_error(history_cli(matrix, "kvm/nope/boot"), 2)
    assert "no cell matches 'kvm/nope/boot'" in unknown and "kvm/newest/boot" in unknown
    assert "not a cell name" in assert_one_line_error(history_cli(matrix, "kvm-newest"), 2)


def test_a_file_that_is_no_database_is_refused_in_one_line(tmp_path: Path) -> None:
    matrix = lab_copy(tmp_path)
    corrupt = tmp_path / "out" / "history.sqlite"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"this is not an SQLite database\n" * 200)
    results = write_run(tmp_path / "a", "before")
    for args in ((), ("--runs",), ("--record", str(results), "--kind", "test")):
        line = assert_one_line_error(history_cli(matrix, *args), 1)
        assert f"{corrupt}: not an SQLite database, or a damaged one" in line
        assert "move it away" in line
    assert corrupt.read_bytes() == b"this is not an SQLite database\n" * 200


def lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_a_locked_database_is_waited_for_briefly_then_refused(tmp_path: Path) -> None:
    location = parse_url(f"sqlite:///{tmp_path / 'history.sqlite'}", "test")
    open_history(location).close()
    holder = lock(tmp_path / "history.sqlite")
    started = time.monotonic()
    with pytest.raises(HistoryError, match=r"the database is locked \(still, after 0.3 s\)"):
        open_history(location, lock_wait_s=0.3)
    assert time.monotonic() - started >= 0.3
    matrix = lab_copy(tmp_path)
    env_url = {"UCVM_HISTORY_URL": f"sqlite:///{tmp_path / 'history.sqlite'}"}
    said = history_cli(matrix, "--record", str(write_run(tmp_path / "a", "before")), "--kind",
                       "test", env={**_environ(), **env_url})  # fmt: skip
    line = assert_one_line_error(said, 1)
    assert line.startswith(f"ucvm-lab history: the run's history is not recorded: {tmp_path}")
    assert "locked" in line and "another ucvm-lab is writing it" in line
    holder.rollback()
    holder.close()


def test_a_lock_released_within_the_wait_is_waited_for(tmp_path: Path) -> None:
    location = parse_url(f"sqlite:///{tmp_path / 'history.sqlite'}", "test")
    open_history(location).close()
    holder = lock(tmp_path / "history.sqlite")
    release = threading.Timer(0.5, holder.rollback)
    release.start()
    try:
        with open_history(location, lock_wait_s=10) as history:
            record_run(history, info("r1"), read_results([write_run(tmp_path / "a", "before")]))
            assert [run.run_id for run in list_runs(history)] == ["r1"]
    finally:
        release.join()
        holder.close()


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "UCVM_HISTORY_URL"}


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("not a url at all", "not a database URL"),
        ("mysql://ucvm:hunter2-pw@db.example/history", "'mysql' is no database the history uses"),
        ("postgresql+psycopg2://ucvm:hunter2-pw@db/h", "'postgresql+psycopg2' is no database"),
        ("postgresql://ucvm:hunter2-pw@db.example", "names no database"),
        ("sqlite://", "a database in memory keeps no history"),
    ],
)
def test_an_invalid_history_url_names_the_variable_and_hides_the_password(
    tmp_path: Path,
    url: str,
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    matrix = lab_copy(tmp_path)
    monkeypatch.setenv("UCVM_HISTORY_URL", url)
    results = str(write_run(tmp_path / "a", "before"))
    for args in ((), ("--record", results, "--kind", "test")):
        assert cli.main(["--matrix", str(matrix), "history", *args]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert "UCVM_HISTORY_URL=" in line and said in line, line
        assert "hunter2-pw" not in line
        assert "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE" in line
    assert not (tmp_path / "out" / "history.sqlite").exists()


def test_the_default_history_is_beside_the_reports(tmp_path: Path) -> None:
    default = locate(tmp_path / "reports", {})
    assert default.file == tmp_path / "reports" / "history.sqlite" and default.source == "default"
    named = locate(tmp_path, {"UCVM_HISTORY_URL": "postgresql://u:pw@h:5433/hist"})
    assert named.shown == "postgresql+psycopg://u:***@h:5433/hist"
    assert named.source == "UCVM_HISTORY_URL" and named.file is None


# --- ucvm-lab run and report record the run after its report ----------------------------------


def fake_pytest(monkeypatch: pytest.MonkeyPatch, variant: str) -> list[str]:
    """``ucvm-lab run``'s pytest (which would boot guests) replaced by one that writes a run's
    results where it was told to; every other command runs for real. Returns the run ids."""
    real_run = subprocess.run
    run_ids: list[str] = []

    def run(command: Any, *args: Any, **kwargs: Any) -> Any:
        if list(command[1:3]) != ["-m", "pytest"]:
            return real_run(command, *args, **kwargs)
        results = Path(next(a for a in command if a.startswith("--alluredir=")).split("=", 1)[1])
        shutil.rmtree(results, ignore_errors=True)
        write_run(results, variant)
        run_ids.append(kwargs["env"]["UCVM_RUN_ID"])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.delenv("UCVM_HISTORY_URL", raising=False)
    monkeypatch.delenv("UCVM_TARGETS", raising=False)
    return run_ids


def test_run_records_after_its_report_and_a_failed_record_fails_the_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix, reports = lab_copy(tmp_path), tmp_path / "out"
    run_ids = fake_pytest(monkeypatch, "before")
    assert cli.main(["--matrix", str(matrix), "run"]) == 0
    said = capsys.readouterr()
    assert f"history: run {run_ids[0]} (nightly, 7 cells) recorded in {reports}" in said.out
    assert said.out.index("support table:") < said.out.index("history: run")  # report first

    assert cli.main(["--matrix", str(matrix), "report"]) == 0  # the same results: once
    assert f"recorded already, as run {run_ids[0]}" in capsys.readouterr().out

    history = reports / "history.sqlite"
    history.write_bytes(b"\0garbage" * 100)
    (reports / "support-table.md").unlink()
    assert cli.main(["--matrix", str(matrix), "run"]) == 1  # the tests passed; the record not
    said = capsys.readouterr()
    [line] = said.err.splitlines()
    assert line.startswith(f"ucvm-lab run: the run's history is not recorded: {history}: not an")
    assert (reports / "support-table.md").is_file()  # the report was written first
    assert (reports / "allure-report" / "index.html").is_file()

    history.unlink()
    assert cli.main(["--matrix", str(matrix), "report"]) == 0
    capsys.readouterr()
    with open_history(locate(reports, {})) as db:
        [run] = list_runs(db)
    assert run.kind == "report" and run.run_id not in run_ids


# --- the parts ----------------------------------------------------------------------------------


def test_cell_names_and_patterns() -> None:
    assert CellKey("kvm", "newest", "boot").name == "kvm/newest/boot"
    assert CellKey("kvm", "previous", "context", channel="nocloud").name == (
        "kvm/previous/context/nocloud"
    )
    rebase = CellKey("kvm", "newest", "rebase", rebase_from="1.0")
    assert rebase.name == "kvm/1.0..newest/rebase" and rebase.matches("kvm/*..newest/rebase")
    assert pattern_problem("kvm/*/boot") is None
    assert pattern_problem("kvm/previous/context/nocloud") is None
    assert "not a cell name" in (pattern_problem("kvm/newest") or "")
    assert "not a cell name" in (pattern_problem("kvm//boot") or "")
    assert "no channel" in (pattern_problem("kvm/1.0..newest/rebase/x") or "")


def cell(status: str = "passed", **figures: float) -> CellRow:
    return CellRow(CellKey("kvm", "newest", "boot"), "KVM", "profile", 1, status, "", T0,
                   "tcg", None, "", 1, dict(figures))  # fmt: skip


def test_figures_move_by_the_ratio_beyond_their_noise_floor() -> None:
    key = CellKey("kvm", "newest", "boot")
    before = {key: cell(ready_s=1.0, fetched_bytes=1000, cache_bytes=1e6, units_failed=0,
                        other=10)}  # fmt: skip
    after = {key: cell(ready_s=1.4, fetched_bytes=3000, cache_bytes=1.3e6, units_failed=1,
                       other=7.9)}  # fmt: skip
    moved = {c.figure: c for c in compare(before, after)}
    # ready_s: ×1.4 but only 0.4 s; fetched_bytes: ×3 but 2 kB; cache_bytes ×1.3 and 300 kB
    assert set(moved) == {"cache_bytes", "units_failed", "other"}
    assert (
        moved["units_failed"].detail == "units_failed ↑ from 0"
        and moved["units_failed"].ratio is None
    )
    assert moved["other"].detail == "other ↓ ×0.79"
    assert {c.figure for c in compare(before, after, ratio=1.5)} == {"units_failed"}
    with pytest.raises(ValueError, match="expected a number > 1"):
        compare(before, after, ratio=1.0)


def test_other_vms_are_counted_from_proc(tmp_path: Path) -> None:
    for pid, argv in ((10, b"/usr/bin/qemu-system-x86_64\0-name\0x"), (11, b"bash\0"),
                      (12, b"qemu-system-aarch64\0"), (13, b"")):  # fmt: skip
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(argv)
    (tmp_path / "self").mkdir()
    (tmp_path / "14").mkdir()  # gone meanwhile: no cmdline
    assert count_vms(tmp_path) == 2
    facts = host_facts()
    assert facts["cpu_count"].isdigit() and facts["vms_running"].isdigit() and facts["host"]


def test_the_nightlys_report_plots_the_trend_of_the_tier_one_boot_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second nightly's report draws each tier-1 boot cell's ready_s over both nightlies
    (the first from the history, the second from its own results) and links the plot."""
    matrix, reports = lab_copy(tmp_path), tmp_path / "out"
    fake_pytest(monkeypatch, "before")
    assert cli.main(["--matrix", str(matrix), "run"]) == 0
    fake_pytest(monkeypatch, "after")
    assert cli.main(["--matrix", str(matrix), "run"]) == 0
    capsys.readouterr()
    svg = reports / "plots" / "trend-ready_s.svg"
    assert svg.is_file() and (reports / "plots" / "trend-ready_s.png").is_file()
    text = svg.read_text()
    for cell in ("kvm newest", "vmware newest", "virtualbox newest"):
        assert cell in text, cell
    assert "plots/trend-ready_s.svg" in (reports / "support-table.html").read_text()
