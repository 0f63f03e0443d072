"""The solver on the real Debian 12 corpus (main + updates + security)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.packages import closed_list, explain, solve
from lab.packages.model import Repository

pytestmark = pytest.mark.solver


@pytest.fixture(scope="module")
def solved(debian: Repository, debian_500: list[solve.Wanted]) -> solve.Solution:
    return solve.solve(solve.build_model(debian, debian_500), "highs")


def test_500_names_give_a_proven_optimal_closed_list(
    debian: Repository, debian_500: list[solve.Wanted], solved: solve.Solution
) -> None:
    assert len(debian_500) == 500
    assert solved.optimal and solved.gap == pytest.approx(0.0, abs=1e-9)
    assert closed_list.closure_problems(debian, solved.packages, debian_500) == []


def test_dose_distcheck_finds_every_package_installable_within_the_list(
    solved: solve.Solution,
) -> None:
    report = closed_list.dose_distcheck(solved.packages)
    # every package of the list, and cernvm-system, which needs all of them at once
    assert report.total == len(solved.packages) + 1 and report.broken == 0, report.output[-2000:]


def test_the_meta_package_pins_exactly_the_list(solved: solve.Solution, tmp_path: Path) -> None:
    deb = closed_list.build_meta_package(solved.packages, tmp_path, version="1.0")
    pins = closed_list.meta_package_depends(deb)
    assert sorted(pins) == sorted((p.name, p.version) for p in solved.packages)


def test_security_updates_win_over_the_point_release(
    debian: Repository, solved: solve.Solution
) -> None:
    """Newest first: every chosen package is the newest version of its name (no pinned or
    versioned dependency forces an older one on this list), and where security or updates
    carry a newer version than the point release, that newer one is chosen."""
    assert all(debian.version_rank(p) == 0 for p in solved.packages)
    updated = [
        p
        for p in solved.packages
        if len(debian.by_name[p.name]) > 1 and "debian-12.15-main" not in p.origin
    ]
    assert len(updated) > 50  # 163 on this list when it was written
    assert all(debian.version_rank(p) == 0 for p in updated)


def test_a_wanted_package_is_itself_not_a_provider_of_its_name(
    debian: Repository, debian_500: list[solve.Wanted], solved: solve.Solution
) -> None:
    chosen = {p.name for p in solved.packages}
    assert {w.name for w in debian_500} <= chosen
    busybox = solve.solve(solve.build_model(debian, [solve.Wanted("busybox")]))
    names = {p.name for p in busybox.packages}
    assert "busybox" in names and "busybox-static" not in names


def test_glpk_proves_the_same_optimum(
    debian: Repository, debian_500: list[solve.Wanted], solved: solve.Solution
) -> None:
    model = solve.build_model(debian, debian_500)
    glpk = solve.solve(model, "glpk", time_limit=120)
    assert glpk.optimal, glpk.detail
    assert glpk.objective == pytest.approx(solved.objective)


def test_two_mail_transport_agents_are_explained(debian: Repository) -> None:
    wanted = [solve.Wanted("postfix"), solve.Wanted("exim4-daemon-light"), solve.Wanted("curl")]
    assert solve.solve(solve.build_model(debian, wanted)).status == "infeasible"
    lines = explain.explain(debian, wanted)
    assert lines[0] == "cannot be installed together: postfix, exim4-daemon-light"
    assert explain.explain(debian, wanted[:1]) == [
        "the list can be installed: there is nothing to explain"
    ]
    assert any("postfix 3.7" in line and "conflicts with exim4" in line for line in lines)


def test_bad_shopping_list_is_refused_before_solving(debian: Repository, tmp_path: Path) -> None:
    listing = tmp_path / "appliance.list"
    listing.write_text("bash\npostfx\nlibc6=9.99\n")
    with pytest.raises(solve.ShoppingListError) as error:
        solve.read_shopping_list(listing, debian)
    message = str(error.value)
    assert f"{listing}:2: package 'postfx'" in message and "did you mean postfix" in message
    assert f"{listing}:3: package 'libc6': version 9.99 is not in the index(es)" in message
