"""Fixtures of the solver suite: the pinned Debian 12 corpus (read in place from
../shared/data/solver), its 500-name shopping list, and seeded synthetic repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.build import index, solver
from lab.build.packages import Repository

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "data" / "solver"
SHOPPING_LIST = REPO / "shopping-lists" / "debian-12-500.list"


@pytest.fixture(scope="session")
def debian_indexes() -> list[Path]:
    paths = sorted(CORPUS.glob("*.Packages.xz"))
    if len(paths) != 3:
        pytest.fail(f"the pinned corpus is missing: expected 3 Packages.xz files in {CORPUS}")
    return paths


@pytest.fixture(scope="session")
def debian(debian_indexes: list[Path]) -> Repository:
    return index.load_cached(debian_indexes)


@pytest.fixture(scope="session")
def debian_500(debian: Repository) -> list[solver.Wanted]:
    return solver.read_shopping_list(SHOPPING_LIST, debian)
