"""A run of the lab: its id, its directory, and the sweeper for what dead runs left behind.

Every resource a run creates carries its id: libvirt domains are named ``ucvm-<run id>-...``
and files live under ``<run root>/<run id>/``. A live run holds a shared lock on
``<run dir>/.alive`` (every xdist worker takes one); a run whose lock nobody holds is dead,
and the sweeper may remove what it left.

The sweeper deletes only what it recognises as a run directory: a real directory whose name
is a run id (``new_run_id()``'s format) and which holds the marker ``.ucvm-run`` that
``Run.hold()`` writes (the run id and the owner's uid, as JSON). Anything else under the root
is left alone and reported. The root itself is checked by lab.runroot first.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lab import runroot
from lab.runroot import RunRootError

PREFIX = "ucvm-"
MARKER = ".ucvm-run"
MARKER_LAB = "ucvm-lab"
RUN_ID = re.compile(r"[0-9]{10}[0-9a-f]{4}")  # month, day, hour, minute, second; 2 random bytes
ROOT_FILES = re.compile(r"\.accel-.*")  # the root's own files (libvirt's accelerator cache)


def new_run_id() -> str:
    return time.strftime("%m%d%H%M%S") + secrets.token_hex(2)


@dataclass
class Run:
    id: str
    root: Path
    _lock: IO[str] | None = field(default=None, repr=False)
    held: list[Any] | None = field(default=None, repr=False)
    """While a list (`--keep-failed`, conftest.py): the instances whose ``with`` block ended,
    not destroyed yet; the end of the test keeps them (it failed) or destroys them."""

    @property
    def dir(self) -> Path:
        return self.root / self.id

    def resource_name(self, *parts: str) -> str:
        return "-".join((PREFIX + self.id, *parts))

    def hold(self) -> Run:
        """Mark this run alive for as long as this process lives (or until release()): the
        run root checked (made 0711 if missing), the run directory (0711) and its marker."""
        if not RUN_ID.fullmatch(self.id):
            raise RunRootError(
                f"run id {self.id!r}: expected 10 digits and 4 hex digits, as new_run_id() "
                "makes (the sweeper recognises run directories by it)"
            )
        runroot.make_root(self.root)
        if not runroot.make_dir(self.dir):  # another worker of this run made it, or not ours
            info = self.dir.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                raise RunRootError(
                    f"{self.dir}: exists and is not a directory of yours (a link, a file, or "
                    "another user's): not a run directory this lab made; choose another run id"
                )
        marked = os.path.lexists(self.dir / MARKER)  # by another worker of this run, or not ours
        found = run_dir_problem(self.dir) if marked else None
        if found:
            raise RunRootError(f"{self.dir}: {found}: not a run directory this lab made")
        self._lock = (self.dir / ".alive").open("a")
        fcntl.flock(self._lock, fcntl.LOCK_SH)  # before the marker: no sweeper sees it dead
        if not marked:
            self._mark()
        return self

    def _mark(self) -> None:
        content = {"lab": MARKER_LAB, "run": self.id, "uid": self.dir.lstat().st_uid}
        partial = self.dir / f"{MARKER}.{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        with os.fdopen(os.open(partial, flags, 0o600), "w") as stream:
            json.dump(content, stream)
        os.replace(partial, self.dir / MARKER)  # workers of one run write the same content

    def release(self, keep: bool = False) -> None:
        """Let go of the run; the last process to let go removes its directory, unless
        ``keep`` (it keeps instances: `ucvm-lab down RUN` or `ucvm-lab sweep` removes them)."""
        if self._lock:
            self._lock.close()
            self._lock = None
            if not keep and not run_is_alive(self.dir) and run_dir_problem(self.dir) is None:
                shutil.rmtree(self.dir, ignore_errors=True)


def run_is_alive(run_dir: Path) -> bool:
    try:  # read-only, so that asking never creates a file (in a directory that is not a run)
        descriptor = os.open(run_dir / ".alive", os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):  # no lock: nobody holds it as a run does
        return False
    except OSError as error:  # a symbolic link is no lock; anything else (EACCES): the
        return error.errno != errno.ELOOP  # sweeper cannot tell, so it counts as alive
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def run_dir_problem(path: Path) -> str | None:
    """Why ``path`` is not a run directory of this lab (None if it is one)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "it does not exist"
    if not stat.S_ISDIR(info.st_mode):
        return "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
    if not RUN_ID.fullmatch(path.name):
        return "its name is not a run id (10 digits and 4 hex digits)"
    marker = _read_marker(path / MARKER)
    if isinstance(marker, str):
        return marker
    expected = {"lab": MARKER_LAB, "run": path.name, "uid": info.st_uid}
    if marker != expected:
        return f"its {MARKER} says {json.dumps(marker)}, not {json.dumps(expected)}"
    return None


def _read_marker(marker: Path) -> object:
    """The marker's JSON, or (a string) why there is none to read."""
    try:
        descriptor = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return f"it has no {MARKER} marker"
    except OSError as error:
        return f"its {MARKER} cannot be opened ({error.strerror})"
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            return f"its {MARKER} is not a regular file"
        text = stream.read(4096)
    try:
        return json.loads(text)
    except ValueError:
        return f"its {MARKER} is not the lab's JSON"


@dataclass(frozen=True)
class Survey:
    """What is under a run root: dead runs (the sweeper's), and what it leaves alone, why."""

    dead: list[Path]
    left_alone: list[tuple[Path, str]]


def survey(root: Path, only: str | None = None) -> Survey:
    """Raises RunRootError for a root the lab must not sweep (lab.runroot). ``only``: the
    run of that id alone (`ucvm-lab down RUN`); the rest of the root is not looked at."""
    if not os.path.lexists(root):
        return Survey([], [])
    runroot.check(root)
    dead, left_alone = [], []
    for entry in sorted(root.iterdir()):
        if only is not None and entry.name != only:
            continue
        if ROOT_FILES.fullmatch(entry.name) and entry.is_file():
            continue
        found = run_dir_problem(entry)
        if found:
            left_alone.append((entry, found))
        elif not run_is_alive(entry):
            dead.append(entry)
    return Survey(dead, left_alone)


def dead_run_dirs(root: Path, only: str | None = None) -> list[Path]:
    return survey(root, only).dead


def sweep_files(root: Path, only: str | None = None) -> list[str]:
    """Remove dead runs' directories (``only``: that run's); one line per directory removed
    or left alone."""
    found = survey(root, only)
    lines = []
    for run_dir in found.dead:
        shutil.rmtree(run_dir, ignore_errors=True)
        lines.append(f"files {run_dir}")
    for path, why in found.left_alone:
        lines.append(f"left alone: {path}: not a ucvm-lab run directory ({why})")
    return lines
