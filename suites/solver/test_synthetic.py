"""The solver on seeded synthetic repositories shaped like the paper's (17,000 names, 500
wanted, about 160,000 inequalities when the whole repository is modelled)."""

from __future__ import annotations

import pytest

from lab.packages import closed_list, solve, synthetic
from lab.packages.model import Package, Repository

pytestmark = pytest.mark.solver


@pytest.fixture(scope="module")
def paper_sized() -> synthetic.Synthetic:
    return synthetic.generate(2013, names=17_000, wanted=500)


def wanted_of(problem: synthetic.Synthetic) -> list[solve.Wanted]:
    return [solve.Wanted(name) for name in problem.wanted]


def staleness_and_size(repository: Repository, packages: list[Package]) -> tuple[int, int]:
    """The two levels of the objective, independent of the model's weight M."""
    return sum(repository.version_rank(p) for p in packages), len(packages)


def test_the_whole_repository_model_has_the_papers_size(paper_sized: synthetic.Synthetic) -> None:
    model = solve.build_model(paper_sized.repository, wanted_of(paper_sized), reduce=False)
    print(f"paper-sized synthetic: {model.counts()}")
    assert paper_sized.stats.names == 17_000 and len(paper_sized.wanted) == 500
    assert 30_000 <= len(model.variables) <= 45_000  # FACTS: 37,543 in a prototype
    assert 140_000 <= model.inequalities <= 180_000  # the paper: about 160,000


def test_reduced_and_whole_models_reach_the_same_optimum(
    paper_sized: synthetic.Synthetic,
) -> None:
    repository, wanted = paper_sized.repository, wanted_of(paper_sized)
    reduced = solve.solve(solve.build_model(repository, wanted), "highs")
    whole = solve.solve(solve.build_model(repository, wanted, reduce=False), "highs")
    assert reduced.optimal and whole.optimal
    assert reduced.gap == pytest.approx(0, abs=1e-9) and whole.gap == pytest.approx(0, abs=1e-9)
    assert staleness_and_size(repository, reduced.packages) == staleness_and_size(
        repository, whole.packages
    )
    assert closed_list.closure_problems(repository, reduced.packages, wanted) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_highs_and_glpk_agree_on_the_objective(seed: int) -> None:
    problem = synthetic.generate(seed, names=2_000, wanted=100)
    model = solve.build_model(problem.repository, wanted_of(problem))
    highs, glpk = solve.solve(model, "highs"), solve.solve(model, "glpk", time_limit=120)
    assert highs.optimal and glpk.optimal, glpk.detail
    assert highs.objective == pytest.approx(glpk.objective)


@pytest.mark.nightly
def test_glpk_on_the_paper_sized_problem(paper_sized: synthetic.Synthetic) -> None:
    model = solve.build_model(paper_sized.repository, wanted_of(paper_sized))
    glpk = solve.solve(model, "glpk", time_limit=300)
    if glpk.status == "time-limit":
        pytest.skip(f"glpk found no proof of optimality in 300 s ({glpk.detail})")
    highs = solve.solve(model, "highs")
    assert glpk.optimal and glpk.objective == pytest.approx(highs.objective)
