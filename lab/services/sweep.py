"""The sweep of every kind of service: what the services of dead runs left running.

``ucvm-lab sweep`` calls ``sweep`` before it removes the dead runs' directories (the
repository servers are found by the pid files in them). A new kind of service that a killed
run can leave behind goes in ``SERVICES``.
"""

from __future__ import annotations

from pathlib import Path

from lab.services.base import Service
from lab.services.emulators import MotoServer, Vcsim
from lab.services.metadata import MetadataService
from lab.services.repo import RepoServer

SERVICES: tuple[type[Service], ...] = (RepoServer, MetadataService, MotoServer, Vcsim)


def sweep(run_root: Path, only: str | None = None) -> list[str]:
    """One line per thing removed, service by service (``only``: of that run alone)."""
    return [line for service in SERVICES for line in service.sweep(run_root, only)]
