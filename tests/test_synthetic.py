"""The synthetic repository generator: deterministic, scalable, shaped like the paper's problem,
every dependency resolvable (but the few broken on purpose), and feasible for its lists."""

from __future__ import annotations

import hashlib
import importlib
import itertools
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lab.packages.model import Package, Repository
from lab.packages.synthetic import Synthetic, generate, shopping_list, write_packages_file

ROOT = Path(__file__).resolve().parents[1]


def _solver():
    """lab.packages.solve, or a skip while it does not exist yet."""
    try:
        return importlib.import_module("lab.packages.solve")
    except ImportError as error:
        pytest.skip(f"lab.packages.solve is not importable yet ({error})")


@pytest.fixture(scope="module")
def small() -> Synthetic:
    return generate(7, names=5_000)


@pytest.fixture(scope="module")
def paper() -> Synthetic:
    return generate(1)


def fingerprint(synthetic: Synthetic) -> str:
    """A digest of everything in the repository and the list, in order."""
    digest = hashlib.sha256()
    for package in synthetic.repository.packages:
        digest.update(repr(package).encode())
    digest.update("\n".join(synthetic.wanted).encode())
    return digest.hexdigest()


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_same_repository(small: Synthetic) -> None:
    again = generate(7, names=5_000)
    assert fingerprint(again) == fingerprint(small)
    assert again.stats == small.stats


def test_another_seed_another_repository(small: Synthetic) -> None:
    assert fingerprint(generate(8, names=5_000)) != fingerprint(small)


def test_independent_of_hash_seed() -> None:
    """No set or dict order leaks in: two interpreters with different hash seeds agree."""
    script = (
        "from lab.packages.synthetic import generate\n"
        "from tests.test_synthetic import fingerprint\n"
        "print(fingerprint(generate(3, names=1_000, wanted=100)))\n"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(run.stdout.strip())
    assert len(digests) == 1


def test_global_random_untouched() -> None:
    import random

    random.seed(99)
    expected = random.random()
    random.seed(99)
    generate(2, names=1_000, wanted=50)
    assert random.random() == expected


def test_list_sizes_are_nested(small: Synthetic) -> None:
    shorter = small.with_wanted(100)
    longer = small.with_wanted(2_000)
    assert shorter.repository is small.repository
    assert longer.wanted[:500] == small.wanted
    assert small.wanted[:100] == shorter.wanted
    assert generate(7, names=5_000, wanted=100).wanted == shorter.wanted


# --- shape and scale ---------------------------------------------------------------------------


def test_paper_shape(paper: Synthetic) -> None:
    """17,000 names, ~2.2 versions each (FACTS: 37,543 variables), 500 wanted."""
    stats = paper.stats
    assert stats.names == 17_000 == len(paper.repository.by_name)
    assert len(paper.wanted) == 500 == len(set(paper.wanted))
    assert 33_000 <= stats.candidates <= 42_000
    assert 0.5 <= stats.multi_version_names / stats.names <= 0.7
    assert 3.0 <= stats.dependency_clauses / stats.candidates <= 4.0
    assert 0.05 <= stats.alternatives / stats.dependency_clauses <= 0.15
    assert 0.15 <= stats.versioned_dependencies / stats.dependency_clauses <= 0.4
    assert 10 <= stats.cycles <= 40  # Debian's solutions hold 13-30
    assert 1 <= stats.essential <= 23
    assert stats.conflicts > 1_000 and stats.breaks > 1_000
    assert 0 < stats.unsatisfiable_dependencies <= 0.001 * stats.candidates


def test_paper_sized_whole_model(paper: Synthetic) -> None:
    """The paper's model of the whole repository: about 160,000 inequalities (FACTS: a
    prototype's synthetic 17k repository gave 37,543 variables and 151,776 rows)."""
    solver = _solver()
    wanted = [solver.Wanted(name) for name in paper.wanted]
    model = solver.build_model(paper.repository, wanted, reduce=False)
    assert len(model.variables) == paper.stats.candidates
    assert 135_000 <= model.inequalities <= 185_000


def test_realistic_ingredients(paper: Synthetic) -> None:
    packages = paper.repository.packages
    provides = [r for p in packages for r in p.provides]
    assert any(r.op == "=" for r in provides) and any(r.op is None for r in provides)
    assert any(r.op == "<<" for p in packages for clause in p.requirements() for r in clause)
    assert any(r.op == "<<" for p in packages for r in p.breaks)
    assert any(p.pre_depends for p in packages)
    assert any(r.arch == "any" for p in packages for clause in p.depends for r in clause)
    # a package that conflicts with a name it provides itself (mail transport agents)
    assert any({r.name for r in p.conflicts} & {r.name for r in p.provides} for p in packages)
    # a conflict between the two sides of an alternative
    repository = paper.repository
    assert any(
        set(repository.satisfiers(clause[0])) & repository.conflicting(q)
        for p in paper.world
        for clause in p.depends
        if len(clause) > 1
        for q in repository.satisfiers(clause[1])
    )


def test_newer_versions_change_their_dependencies(paper: Synthetic) -> None:
    """Version choice matters: some names' versions differ in what they need."""
    differing = sum(
        1
        for versions in paper.repository.by_name.values()
        if len({tuple(sorted(str(r) for c in p.depends for r in c)) for p in versions}) > 1
    )
    assert differing > 0.3 * paper.stats.multi_version_names


@pytest.mark.parametrize("names", [5_000, 17_000, 60_000])
def test_scales_with_names(names: int) -> None:
    synthetic = generate(11, names=names)
    stats = synthetic.stats
    assert stats.names == names
    assert 2.0 <= stats.candidates / names <= 2.5
    assert 3.0 <= stats.dependency_clauses / stats.candidates <= 4.0
    assert 0.035 <= stats.virtual_names / names <= 0.045
    assert len(synthetic.wanted) == 500


def test_too_many_wanted_is_refused() -> None:
    with pytest.raises(ValueError, match="eligible"):
        generate(1, names=1_000, wanted=5_000)


# --- resolvable, and feasible by construction --------------------------------------------------


def test_versions_ascend_as_dpkg_orders_them(small: Synthetic) -> None:
    repository = small.repository
    for versions in repository.by_name.values():
        texts = [p.version for p in versions]  # newest first, by dpkg's order
        assert len(set(texts)) == len(texts)
        assert all(repository.compare(a, b) > 0 for a, b in itertools.pairwise(texts))


def test_every_dependency_resolves_but_the_broken_ones(paper: Synthetic) -> None:
    repository = paper.repository
    unresolved: Counter[str] = Counter()
    for package in repository.packages:
        for clause in package.requirements():
            if not any(repository.satisfiers(relation) for relation in clause):
                unresolved[package.name] += 1
    assert set(unresolved) == set(paper.broken)
    assert sum(unresolved.values()) == paper.stats.unsatisfiable_dependencies


def test_conflicts_name_existing_packages(small: Synthetic) -> None:
    repository = small.repository
    for package in repository.packages:
        for relation in package.conflicts + package.breaks:
            assert repository.knows(relation.name), f"{package} conflicts with {relation}"


def test_nobody_depends_on_a_broken_or_essential_name(paper: Synthetic) -> None:
    avoided = set(paper.broken) | {p.name for p in paper.repository.packages if p.essential}
    for package in paper.repository.packages:
        if package.essential:
            continue
        for clause in package.requirements():
            assert not {r.name for r in clause} & avoided, f"{package} needs {clause}"


def check_closed(repository: Repository, chosen: list[Package], wanted: list[str]) -> None:
    """Closed (every requirement satisfied inside), conflict-free, one version per name,
    every wanted and Essential name present."""
    inside = set(chosen)
    names = Counter(p.name for p in chosen)
    assert max(names.values()) == 1
    assert set(wanted) <= set(names)
    assert {p.name for p in repository.packages if p.essential} <= set(names)
    for package in chosen:
        for clause in package.requirements():
            assert any(q in inside for r in clause for q in repository.satisfiers(r)), (
                f"{package}: {clause} unsatisfied"
            )
        assert not repository.conflicting(package) & inside, f"{package} conflicts"


@pytest.mark.parametrize("names", [5_000, 17_000])
def test_world_is_a_solution(names: int) -> None:
    """The witness itself: closed and conflict-free, so every list drawn from it is feasible."""
    synthetic = generate(5, names=names)
    check_closed(synthetic.repository, synthetic.world, synthetic.eligible)


@pytest.mark.parametrize(("names", "wanted"), [(5_000, 500), (17_000, 500), (17_000, 2_000)])
def test_solver_finds_an_optimum(names: int, wanted: int) -> None:
    solver = _solver()
    synthetic = generate(3, names=names, wanted=wanted)
    model = solver.build_model(
        synthetic.repository, [solver.Wanted(name) for name in synthetic.wanted]
    )
    solution = solver.solve(model, "highs", time_limit=120)
    assert solution.status == "optimal", solution.detail
    check_closed(synthetic.repository, solution.packages, synthetic.wanted)


# --- output for people and tools ---------------------------------------------------------------


def test_shopping_list_reads_back(small: Synthetic, tmp_path: Path) -> None:
    text = shopping_list(small)
    assert text.splitlines() == small.wanted and text.endswith("\n")
    solver = _solver()
    path = tmp_path / "list.txt"
    path.write_text(text)
    assert [w.name for w in solver.read_shopping_list(path, small.repository)] == small.wanted


def test_packages_file_reads_back(tmp_path: Path) -> None:
    debian = pytest.importorskip("lab.packages.debian")
    if not hasattr(debian, "write_packages"):
        pytest.skip("lab.packages.debian.write_packages is not written yet")
    synthetic = generate(4, names=1_000, wanted=100)
    path = write_packages_file(synthetic, tmp_path / "Packages.xz")
    again = debian.read_debian([path])
    assert len(again) == len(synthetic.repository)
    original = {p.key: p for p in synthetic.repository.packages}
    for package in again.packages:
        source = original[package.key]
        assert package.requirements() == source.requirements()
        assert (package.provides, package.conflicts, package.breaks) == (
            source.provides,
            source.conflicts,
            source.breaks,
        )
        assert package.essential == source.essential
