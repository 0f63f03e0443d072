"""Fixtures of the solver suite: the pinned Debian 12 corpus (read in place from
../shared/data/solver), its 500-name shopping list, and seeded synthetic repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.packages import solve
from lab.packages.debian import load_cached
from lab.packages.model import Repository

REPO = Path(__file__).resolve().parents[2]
SHOPPING_LIST = REPO / "shopping-lists" / "debian-12-500.list"


@pytest.fixture(scope="session")
def debian(corpus_files: list[Path]) -> Repository:
    return load_cached(corpus_files)


@pytest.fixture(scope="session")
def debian_500(debian: Repository) -> list[solve.Wanted]:
    return solve.read_shopping_list(SHOPPING_LIST, debian)
