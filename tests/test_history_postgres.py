"""The history in a real PostgreSQL server (Debian's postgresql), started by the tests.

``PostgresServer`` makes a cluster (initdb) in a directory of its own under /tmp, owned by the
``postgres`` system user when the tests run as root (postgres refuses root), and runs it with
pg_ctl on 127.0.0.1 and a free port, password logins only over TCP. ``running_postgres()``
stops it at the end and asserts that no process of it is left. tests/test_history.py runs its
schema, record and compare tests against it and against SQLite through one parametrised
fixture; this file holds what is PostgreSQL's own: the command line pointed at the server by
UCVM_HISTORY_URL, a refused login, a server that is not there, and the server's life cycle.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path

import psycopg
import pytest

from tests.commands import ucvm_lab
from tests.test_history import T0, lab_copy, write_run

PASSWORD = "pg-Secret-7f3a"  # the superuser's; never to appear in the lab's output
SYSTEM_USER = "postgres"


def postgres_bin() -> Path:
    """The newest PostgreSQL's bin directory; scripts/setup.sh installs postgresql, so a
    machine without it fails the test rather than skipping it."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parent)
    if not found:
        pytest.fail("no /usr/lib/postgresql/*/bin/initdb: run scripts/setup.sh (postgresql)")
    return found[-1].parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster of a test session, on 127.0.0.1 (see the module's docstring)."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.root = Path(tempfile.mkdtemp(prefix="ucvm-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        self.pid: int | None = None
        self._names = count(1)
        self.as_root = os.geteuid() == 0
        if self.as_root:
            user = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.root.chmod(0o700)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", SYSTEM_USER, "--"] if self.as_root else []
        done = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, cwd=self.root
        )
        assert done.returncode == 0, f"{args[0]} failed: {done.stdout}{done.stderr}"
        return done

    def start(self) -> PostgresServer:
        password_file = self.root / "password"
        self.run("sh", "-c", f"umask 077; printf %s '{PASSWORD}' > {password_file}")
        self.run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
            "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}",
            "--no-sync",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c full_page_writes=off"
        )
        self.run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", password=PASSWORD,
            dbname=database, autocommit=True,
        )  # fmt: skip

    def create_database(self) -> str:
        """A new, empty database; its name."""
        name = f"history_{next(self._names)}"
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"'.encode())
        return name

    def processes(self) -> list[int]:
        """The processes of this cluster still running (their command line or their
        working directory names its data directory, or it is the postmaster)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.data).encode() in cmdline or int(entry.name) == self.pid:
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        if self.data.exists():
            prefix = ["runuser", "-u", SYSTEM_USER, "--"] if self.as_root else []
            subprocess.run(
                [*prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                 "-t", "60", "stop"],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server, stopped at the end: no process of it may outlive this."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()
        left = server.processes()
        assert left == [], f"postgres processes outlived the test: {left}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def test_the_server_listens_on_loopback_only_and_asks_for_a_password(
    postgres: PostgresServer,
) -> None:
    with postgres.connect() as connection:
        row = connection.execute("SHOW listen_addresses").fetchone()
    assert row == ("127.0.0.1",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1", port=postgres.port, user="postgres", password="wrong",
            dbname="postgres",
        ).close()  # fmt: skip


def test_the_command_line_records_and_compares_in_postgresql(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """UCVM_HISTORY_URL names the server: two runs recorded there, their difference shown,
    and the password never printed."""
    lab = lab_copy(tmp_path)
    database = postgres.create_database()
    env = os.environ | {"UCVM_HISTORY_URL": postgres.url(database)}
    first, second = write_run(tmp_path / "a", "before", T0), write_run(tmp_path / "b", "after")
    for results in (first, second):
        recorded = ucvm_lab("--matrix", str(lab), "history", "--record", str(results),
                            "--kind", "nightly", env=env)  # fmt: skip
        assert recorded.returncode == 0, recorded.stderr
        assert "recorded in postgresql+psycopg://postgres:***@127.0.0.1" in recorded.stdout
    changes = ucvm_lab("--matrix", str(lab), "history", env=env)
    runs = ucvm_lab("--matrix", str(lab), "history", "--runs", env=env)
    assert changes.returncode == 0 and runs.returncode == 0, changes.stderr + runs.stderr
    new_failure = next(line for line in changes.stdout.splitlines() if "new failure" in line)
    assert "kvm/newest/boot" in new_failure and "failed in phase repo" in new_failure
    assert "ready_s ↑ ×2.00" in changes.stdout
    for said in (changes, runs, recorded):
        assert PASSWORD not in said.stdout + said.stderr
    with postgres.connect(database) as connection:  # in the server itself, not a file
        kinds = connection.execute("SELECT kind FROM runs ORDER BY pk").fetchall()
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert kinds == [("nightly",), ("nightly",)] and version == ("r0002",)
    assert not (tmp_path / "out" / "history.sqlite").exists()


def test_a_refused_login_is_one_line_without_the_password(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    wrong = "Wrong-pw-93x"
    env = os.environ | {"UCVM_HISTORY_URL": postgres.url("postgres", password=wrong)}
    said = ucvm_lab("--matrix", str(lab_copy(tmp_path)), "history", "--runs", env=env)
    assert said.returncode == 1
    [line] = said.stderr.splitlines()
    assert line.startswith("ucvm-lab history: postgresql+psycopg://postgres:***@127.0.0.1:")
    assert "password authentication failed" in line and "UCVM_HISTORY_URL" in line
    assert wrong not in said.stdout + said.stderr and "Traceback" not in said.stderr


def test_a_server_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    url = f"postgresql://ucvm:{PASSWORD}@127.0.0.1:{free_port()}/history"
    env = os.environ | {"UCVM_HISTORY_URL": url}
    said = ucvm_lab("--matrix", str(lab_copy(tmp_path)), "history", env=env)
    assert said.returncode == 1
    [line] = said.stderr.splitlines()
    assert "cannot use the database" in line and "check that the server runs" in line
    assert PASSWORD not in line and "***" in line


def test_a_stopped_server_leaves_no_process() -> None:
    with running_postgres() as server:
        assert server.pid in server.processes()
        pid = server.pid
    assert server.processes() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not server.root.exists()
