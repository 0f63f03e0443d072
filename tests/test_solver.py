"""The package-list solver on small repositories whose answers are known by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from debian.debian_support import version_compare

from lab.packages import closed_list
from lab.packages.explain import explain, minimal_core
from lab.packages.model import Package, Relation, Repository
from lab.packages.solve import (
    ShoppingListError,
    Wanted,
    build_model,
    read_shopping_list,
    solve,
)

R = Relation


def pkg(name: str, version: str, **fields: object) -> Package:
    return Package(
        name, version, "amd64", filename=f"pool/{name}_{version}.deb", sha256="0" * 64, **fields
    )  # type: ignore[arg-type]


@pytest.fixture
def repo() -> Repository:
    return Repository(
        [
            pkg("base", "1", essential=True),
            pkg("app", "2", depends=((R("libx", ">=", "2"),),)),
            pkg("app", "1", depends=((R("libx"),),)),
            pkg("libx", "2", depends=((R("mta"),),)),
            pkg("libx", "1"),
            pkg("postfix", "3.7", provides=(R("mta"),), conflicts=(R("mta"),)),
            pkg("exim", "4.96", provides=(R("mta"),), conflicts=(R("mta"),)),
            pkg("tool", "1", depends=((R("libx", "<<", "2"),),)),
            pkg("blocker", "1", conflicts=(R("libx"),)),
            pkg("needs-ghost", "1", depends=((R("ghost", ">=", "1"),),)),
            pkg("virtual-user", "1", depends=((R("mta", ">=", "1"),),)),
        ]
    )


def names(packages: list[Package]) -> list[str]:
    return sorted(f"{p.name}={p.version}" for p in packages)


@pytest.mark.parametrize("engine", ["highs", "glpk"])
def test_newest_versions_first_then_fewest_packages(repo: Repository, engine: str) -> None:
    solution = solve(build_model(repo, [Wanted("app")]), engine)
    assert solution.optimal
    # app 2 (newest) needs libx 2, which needs an MTA: one of the two, not both.
    chosen = names(solution.packages)
    assert chosen[:2] == ["app=2", "base=1"] and "libx=2" in chosen
    assert len([n for n in chosen if n.startswith(("postfix", "exim"))]) == 1
    assert solution.objective == 4.0  # four packages, all newest: rank 0 each


@pytest.mark.parametrize("engine", ["highs", "glpk"])
def test_an_older_version_when_a_wanted_package_demands_it(repo: Repository, engine: str) -> None:
    model = build_model(repo, [Wanted("app"), Wanted("tool")])
    solution = solve(model, engine)
    assert names(solution.packages) == ["app=1", "base=1", "libx=1", "tool=1"]
    weight = len(model.variables) + 1
    assert solution.objective == 4 + 2 * weight  # app and libx are each one version behind


def test_model_rows_have_the_papers_form(repo: Repository) -> None:
    model = build_model(repo, [Wanted("app"), Wanted("tool")])
    counts = model.counts()
    assert counts["variables"] == len(model.variables) == 8  # reachable only, not blocker
    assert (counts["wanted"], counts["essential"]) == (2, 1)
    assert {"needs", "conflicts", "one-version"} <= counts.keys()
    for start, end, kind, lower, upper in zip(
        model.row_starts[:-1],
        model.row_starts[1:],
        model.row_kinds,
        model.row_lower,
        model.row_upper,
        strict=True,
    ):
        values = model.row_values[start:end]
        if kind == "needs":  # x_b + x_c - x_a >= 0
            assert values[-1] == -1.0 and set(values[:-1]) == {1.0} and lower == 0.0
        if kind == "conflicts":  # x_a + x_b <= 1
            assert values == [1.0, 1.0] and upper == 1.0


def test_whole_repository_model_is_larger_and_agrees(repo: Repository) -> None:
    wanted = [Wanted("app"), Wanted("tool")]
    reduced, whole = build_model(repo, wanted), build_model(repo, wanted, reduce=False)
    assert len(whole.variables) == len(repo) > len(reduced.variables)
    # the same packages, but costs scale with the number of variables: compare the choice
    assert names(solve(whole).packages) == names(solve(reduced).packages)


def test_unversioned_provides_does_not_satisfy_a_versioned_dependency(repo: Repository) -> None:
    model = build_model(repo, [Wanted("virtual-user")])
    assert solve(model).status == "infeasible"
    assert "mta (>= 1), which no package satisfies" in "\n".join(
        explain(repo, [Wanted("virtual-user")])
    )


def test_pinned_version_is_honoured(repo: Repository) -> None:
    solution = solve(build_model(repo, [Wanted("libx", "1")]))
    assert "libx=1" in names(solution.packages)


def test_infeasible_list_is_explained_by_a_minimal_core(repo: Repository) -> None:
    wanted = [Wanted("tool"), Wanted("exim"), Wanted("libx"), Wanted("postfix")]
    assert minimal_core(repo, wanted) == [Wanted("exim"), Wanted("postfix")]
    lines = explain(repo, wanted)
    assert lines[0] == "cannot be installed together: exim, postfix"
    assert any("exim 4.96 (amd64) conflicts with postfix 3.7 (amd64)" in line for line in lines)


def test_explanation_follows_the_chain_to_the_conflict(repo: Repository) -> None:
    text = "\n".join(explain(repo, [Wanted("app"), Wanted("blocker")]))
    assert "app 2 (amd64) needs libx (>= 2) -> libx 2 (amd64)" in text
    assert "conflicts with blocker 1 (amd64)" in text
    assert "app 1 (amd64) needs libx, but libx 1 (amd64) clashes with blocker 1" in text


def test_a_missing_dependency_is_named(repo: Repository) -> None:
    text = "\n".join(explain(repo, [Wanted("app"), Wanted("needs-ghost")]))
    assert text.startswith("cannot be installed: needs-ghost")
    assert "needs ghost (>= 1), which no package satisfies" in text


def test_shopping_list_errors_name_file_line_and_package(repo: Repository, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# the appliance\napp\napq\nlibx=9\napp\nBad_Name\nmta\n")
    with pytest.raises(ShoppingListError) as error:
        read_shopping_list(listing, repo)
    lines = str(error.value).splitlines()
    assert (
        lines[0] == f"{listing}:3: package 'apq': no such package or virtual name in the "
        "index(es); did you mean app?"
    )
    assert (
        lines[1] == f"{listing}:4: package 'libx': version 9 is not in the index(es); "
        "available: 2, 1"
    )
    assert lines[2].startswith(f"{listing}:5: package 'app': listed twice (first on line 2)")
    assert lines[3].startswith(f"{listing}:6: package 'Bad_Name': not a package name")
    assert len(lines) == 4  # `mta` is a virtual name: allowed


@pytest.mark.parametrize("content", ["", "# only a comment\n\n   \n"])
def test_a_list_without_package_names_is_refused(
    repo: Repository, tmp_path: Path, content: str
) -> None:
    listing = tmp_path / "empty.list"
    listing.write_text(content)
    with pytest.raises(ShoppingListError) as error:
        read_shopping_list(listing, repo)
    assert str(error.value) == (
        f"{listing}: no package names; a shopping list lists one package per line"
    )


def test_a_long_line_is_echoed_cut_to_80_characters(repo: Repository, tmp_path: Path) -> None:
    listing = tmp_path / "long.list"
    listing.write_text("app=" + "9" * 1000 + "\n")
    with pytest.raises(ShoppingListError) as error:
        read_shopping_list(listing, repo)
    assert str(error.value) == (
        f"{listing}:1: package 'app': version {'9' * 80}… (1,000 characters) is not in the "
        "index(es); available: 2, 1"
    )


def test_closure_check_finds_what_is_missing_or_conflicting(repo: Repository) -> None:
    by = {f"{p.name}={p.version}": p for p in repo.packages}
    good = [by["base=1"], by["app=2"], by["libx=2"], by["exim=4.96"]]
    assert closed_list.closure_problems(repo, good, [Wanted("app")]) == []
    bad = [by["app=2"], by["libx=2"], by["exim=4.96"], by["postfix=3.7"], by["libx=1"]]
    problems = "\n".join(closed_list.closure_problems(repo, bad, [Wanted("tool")]))
    assert "exim 4.96 (amd64) conflicts with postfix 3.7 (amd64)" in problems
    assert "two versions of libx" in problems
    assert "wanted tool is not in the list" in problems
    assert "Essential base is not in the list" in problems


def test_dose_distcheck_agrees_on_a_closed_list(repo: Repository) -> None:
    solution = solve(build_model(repo, [Wanted("app")]))
    assert closed_list.dose_distcheck(solution.packages).ok
    broken = [p for p in solution.packages if p.name != "libx"]  # app's dependency missing
    report = closed_list.dose_distcheck(broken)
    assert report.broken >= 1 and not report.ok


def test_dose_distcheck_sees_conflicts_inside_the_list(repo: Repository) -> None:
    by = {p.name: p for p in repo.packages}
    clashing = [by["base"], by["postfix"], by["exim"]]  # each installable alone, not together
    report = closed_list.dose_distcheck(clashing)
    assert not report.ok and "cernvm-system" in report.output


def test_meta_package_pins_exactly_the_list(repo: Repository, tmp_path: Path) -> None:
    packages = solve(build_model(repo, [Wanted("app")])).packages
    deb = closed_list.build_meta_package(packages, tmp_path, version="1.0")
    assert deb.name == "cernvm-system_1.0_all.deb"
    assert sorted(closed_list.meta_package_depends(deb)) == sorted(
        (p.name, p.version) for p in packages
    )


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ("1.0\nEssential: yes", "version '1.0\\nEssential: yes' has embedded whitespace"),
        ("../../evil", "the upstream part of version '../../evil' must start with a digit"),
        ("1.0/x", "the upstream part of version '1.0/x' must start with a digit, then"),
        ("", "the version is empty"),
    ],
)
def test_meta_package_refuses_a_version_that_is_not_debians(
    repo: Repository, tmp_path: Path, version: str, problem: str
) -> None:
    """The CLI checks --version; build_meta_package checks again for any other caller."""
    packages = solve(build_model(repo, [Wanted("app")])).packages
    with pytest.raises(closed_list.ClosedListError) as error:
        closed_list.build_meta_package(packages, tmp_path, version=version)
    assert str(error.value).startswith(f"meta-package cernvm-system: {problem}")
    assert str(error.value).endswith(
        "; a Debian version is [epoch:]upstream[-revision], e.g. 1.0 or 2:1.4-3"
    )
    assert list(tmp_path.iterdir()) == []


def test_diff_between_closed_lists() -> None:
    def entry(name: str, version: str) -> closed_list.Entry:
        return closed_list.Entry(name, version, "amd64", "", "")

    old = [entry("a", "1.0"), entry("b", "2.0"), entry("c", "1:1.0")]
    new = [entry("a", "1.0"), entry("b", "2.0~rc1"), entry("c", "1:1.1"), entry("d", "1")]
    change = closed_list.diff(old, new, version_compare)
    assert [e.name for e in change.added] == ["d"] and change.removed == []
    assert [(a.version, b.version) for a, b in change.upgraded] == [("1:1.0", "1:1.1")]
    assert [(a.version, b.version) for a, b in change.downgraded] == [("2.0", "2.0~rc1")]
