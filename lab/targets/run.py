"""A run of the lab: its id, its directory, and the sweeper for what dead runs left behind.

Every resource a run creates carries its id: libvirt domains are named ``ucvm-<run id>-...``
and files live under ``<run root>/<run id>/``. A live run holds a shared lock on
``<run dir>/.alive`` (every xdist worker takes one); a run whose lock nobody holds is dead,
and the sweeper may remove what it left.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PREFIX = "ucvm-"


def new_run_id() -> str:
    return time.strftime("%m%d%H%M%S") + secrets.token_hex(2)


@dataclass
class Run:
    id: str
    root: Path
    _lock: IO[str] | None = field(default=None, repr=False)

    @property
    def dir(self) -> Path:
        return self.root / self.id

    def resource_name(self, *parts: str) -> str:
        return "-".join((PREFIX + self.id, *parts))

    def hold(self) -> Run:
        """Mark this run alive for as long as this process lives (or until release())."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.dir, 0o755)
        self._lock = (self.dir / ".alive").open("a")
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        return self

    def release(self) -> None:
        """Let go of the run; the last process to let go removes its directory."""
        if self._lock:
            self._lock.close()
            self._lock = None
            if not run_is_alive(self.dir):
                shutil.rmtree(self.dir, ignore_errors=True)


def run_is_alive(run_dir: Path) -> bool:
    try:
        with (run_dir / ".alive").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def dead_run_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not run_is_alive(d)]


def sweep_files(root: Path) -> list[str]:
    removed = []
    for run_dir in dead_run_dirs(root):
        shutil.rmtree(run_dir, ignore_errors=True)
        removed.append(str(run_dir))
    return removed
