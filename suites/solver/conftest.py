"""Fixtures of the solver suite: the pinned Debian 12 corpus (read in place from
../shared/data/solver), its 500-name shopping list, and seeded synthetic repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.build import index, solver
from lab.build.packages import Repository

REPO = Path(__file__).resolve().parents[2]
SHOPPING_LIST = REPO / "shopping-lists" / "debian-12-500.list"


@pytest.fixture(scope="session")
def debian(corpus_files: list[Path]) -> Repository:
    return index.load_cached(corpus_files)


@pytest.fixture(scope="session")
def debian_500(debian: Repository) -> list[solver.Wanted]:
    return solver.read_shopping_list(SHOPPING_LIST, debian)
