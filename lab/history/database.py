"""Where the history lives, and opening it: SQLite by default, PostgreSQL when named.

The default is ``<reports>/history.sqlite``, beside the matrix's reports: a run rewrites only
its own files there (allure-results, the table, the Allure report), so the next nightly finds
the last one's history. ``UCVM_HISTORY_URL`` names another database instead:
``postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE`` (``postgresql://`` means the same)
or ``sqlite:///FILE``.

``open_history`` brings the schema to this code's newest revision with Alembic (the migrations
are in ``migrations/``; the Config is built here, there is no alembic.ini). It refuses, each
time with one line that names the database (its password masked) and what to do:
- a URL that is no database URL, or names another kind of database (the variable is named);
- a file that is not an SQLite database (or a damaged one);
- a database whose schema revision this code does not know (a newer ucvm-lab wrote it), or
  that holds tables but no history schema (another program's database);
- a database that stays locked (SQLite waits ``lock_wait_s`` for another writer first);
- a server that cannot be reached, or refuses the login.
Every fault is a ``HistoryError``; no SQLAlchemy or driver exception leaves this package.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, SQLAlchemyError

from lab.messages import clip

URL_VARIABLE = "UCVM_HISTORY_URL"
DEFAULT_FILE = "history.sqlite"
LOCK_WAIT_S = 5.0
"""How long a write waits for another process's lock on an SQLite history before giving up."""
CONNECT_TIMEOUT_S = 10
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ADVISORY_LOCK = 0x75636D76  # PostgreSQL: one migration at a time ("ucmv")
EXPECTED = "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:///FILE"


class HistoryError(RuntimeError):
    """The history cannot be opened, read or written: one line naming the database (its
    password masked) and what to do. ``status`` is the command line's exit status: 2 for bad
    input (a URL, a cell name), 1 for a database that fails."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def mask(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ***."""
    return re.sub(r"(://[^/\s:@]*:)\S*@", r"\1***@", text)  # to the last @: p@ss too


@dataclass(frozen=True)
class Location:
    """A history database: its URL, and how to name it in a message."""

    url: URL
    source: str  # "UCVM_HISTORY_URL", or "default" (the reports directory's file)

    @property
    def shown(self) -> str:
        """The database for a message: the file of an SQLite one, else its URL, masked."""
        if self.file is not None:
            return str(self.file)
        return self.url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def file(self) -> Path | None:
        return Path(self.url.database or "") if self.is_sqlite else None

    @property
    def fix(self) -> str:
        """What to change, said at the end of a message."""
        if self.source == URL_VARIABLE:
            return f"or set {URL_VARIABLE} to another database"
        return f"or set {URL_VARIABLE} to use another database"


def locate(reports: Path, environ: Mapping[str, str] | None = None) -> Location:
    """The history of a matrix whose reports go to ``reports``: UCVM_HISTORY_URL if set (and
    valid: else a HistoryError naming the variable), else ``reports/history.sqlite``."""
    raw = (os.environ if environ is None else environ).get(URL_VARIABLE, "").strip()
    if not raw:
        return Location(URL.create("sqlite", database=str(reports / DEFAULT_FILE)), "default")
    return parse_url(raw, URL_VARIABLE)


def parse_url(raw: str, source: str) -> Location:
    """A Location for the URL ``raw`` (from ``source``, named in the error)."""
    shown = f"{source}={clip(mask(raw))}"
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise HistoryError(f"{shown}: not a database URL; expected {EXPECTED}", 2) from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        if not url.database:
            raise HistoryError(f"{shown}: names no database; expected {EXPECTED}", 2)
        return Location(url.set(drivername="postgresql+psycopg"), source)
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if not url.database or url.database == ":memory:":
            raise HistoryError(
                f"{shown}: a database in memory keeps no history; expected {EXPECTED}", 2
            )
        return Location(url, source)
    raise HistoryError(
        f"{shown}: {url.drivername!r} is no database the history uses (PostgreSQL through "
        f"psycopg, or SQLite); expected {EXPECTED}",
        2,
    )


def one_line(error: BaseException, location: Location) -> str:
    """The driver's message in one line, with the URL's password taken out."""
    cause = getattr(error, "orig", None) or error
    message = " ".join(str(cause).split()) or type(cause).__name__
    password = location.url.password
    if password:
        message = message.replace(str(password), "***")
    return mask(message)


@contextmanager
def translating(location: Location, lock_wait_s: float) -> Iterator[None]:
    """Turn what SQLAlchemy and the drivers raise into a HistoryError naming ``location``."""
    where = location.shown
    try:
        yield
    except HistoryError:
        raise
    except OperationalError as error:
        said = one_line(error, location)
        if "database is locked" in said or "database is busy" in said:
            raise HistoryError(
                f"{where}: the database is locked (still, after {lock_wait_s:g} s): another "
                "ucvm-lab is writing it; try again when it has finished"
            ) from None
        if location.is_sqlite:
            raise HistoryError(
                f"{where}: cannot use this SQLite file ({said}); check that its directory "
                f"exists and is writable, {location.fix}"
            ) from None
        raise HistoryError(
            f"{where}: cannot use the database ({said}); check that the server runs and the "
            f"user may log in, {location.fix}"
        ) from None
    except DatabaseError as error:
        said = one_line(error, location)
        if location.is_sqlite:
            raise HistoryError(
                f"{where}: not an SQLite database, or a damaged one ({said}); move it away "
                f"(the next run starts a new history there) {location.fix}"
            ) from None
        raise HistoryError(f"{where}: database error ({said})") from None
    except SQLAlchemyError as error:
        raise HistoryError(f"{where}: database error ({one_line(error, location)})") from None


class History:
    """An open history database (see ``open_history``); close it, or use it with ``with``."""

    def __init__(self, location: Location, engine: Engine, lock_wait_s: float) -> None:
        self.location = location
        self.engine = engine
        self.lock_wait_s = lock_wait_s

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in a transaction (committed at the end, rolled back on an error);
        on SQLite it holds the write lock from its start (BEGIN IMMEDIATE), so that two
        writers wait for each other rather than fail."""
        with translating(self.location, self.lock_wait_s), self.engine.begin() as connection:
            yield connection

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def alembic_config(connection: Connection | None = None) -> Config:
    """The migrations' Config, built in code; ``connection`` is the one they run on."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"{MIGRATIONS} has no revision"
    return head


def make_engine(location: Location, lock_wait_s: float = LOCK_WAIT_S) -> Engine:
    """An engine for ``location``; SQLite's file is opened in BEGIN IMMEDIATE mode and waits
    ``lock_wait_s`` for a lock (its busy timeout)."""
    if not location.is_sqlite:
        connect: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "ucvm-lab",
        }
        return create_engine(location.url, connect_args=connect)
    engine = create_engine(location.url, connect_args={"timeout": lock_wait_s})

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGINs off: ours below
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def open_history(location: Location, *, lock_wait_s: float = LOCK_WAIT_S) -> History:
    """The history at ``location``, its schema brought to this code's newest revision (an
    SQLite file is made, with its directory when it is the default one). Raises HistoryError."""
    file = location.file
    if file is not None and location.source == "default":
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise HistoryError(
                f"{file}: cannot make its directory ({error.strerror}); {location.fix}"
            ) from None
    if file is not None and file.is_dir():
        raise HistoryError(f"{file}: a directory, not an SQLite file; {location.fix}")
    engine = make_engine(location, lock_wait_s)
    try:
        with translating(location, lock_wait_s), engine.begin() as connection:
            migrate(connection, location)
    except BaseException:
        engine.dispose()
        raise
    return History(location, engine, lock_wait_s)


def migrate(connection: Connection, location: Location) -> None:
    """Bring the schema to the newest revision, or refuse one this code does not know."""
    if not location.is_sqlite:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
    current = MigrationContext.configure(connection).get_current_revision()
    scripts = ScriptDirectory.from_config(alembic_config())
    head = scripts.get_current_head()
    if current is None:
        foreign = sorted(set(inspect(connection).get_table_names()) - {"alembic_version"})
        if foreign:
            raise HistoryError(
                f"{location.shown}: holds tables ({', '.join(foreign[:5])}) but no ucvm-lab "
                f"history (no schema revision); give the history an empty database, "
                f"{location.fix}"
            )
    elif current != head:
        try:
            scripts.get_revision(current)
        except (RevisionError, CommandError):
            raise HistoryError(
                f"{location.shown}: its history schema is at revision {current!r}, which this "
                f"ucvm-lab does not know (its newest is {head!r}): a newer ucvm-lab wrote it; "
                f"use that one, {location.fix}"
            ) from None
    if current != head:
        command.upgrade(alembic_config(connection), "head")
