"""Debian's rules in the package model: version order (against python-debian as the oracle)
and what satisfies a relation."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from debian.debian_support import version_compare

from lab.packages.debian import load_cached
from lab.packages.model import Package, Relation, Repository, dpkg_compare

TRICKY = [
    "0",
    "00",
    "0~",
    "0~1",
    "0~20191003-3",
    "0-4",
    "1.0",
    "1.0.0",
    "1.0~rc1",
    "1.0~",
    "1.0+b1",
    "1:0.9",
    "1.0-0",
    "1.0-1~bpo1",
    "a",
    "a~",
    "ab",
    "1.0a",
    "1.0.a",
    "2:1",
    "1.00",
    "01",
    "1.0-1+deb12u1",
    "1.0-1+deb12u10",
    "1.0-1+deb12u2",
    "3.7.11-0+deb12u1",
]


def sign(value: int) -> int:
    return (value > 0) - (value < 0)


@pytest.mark.parametrize(("left", "right"), list(itertools.product(TRICKY, TRICKY)))
def test_version_order_matches_python_debian(left: str, right: str) -> None:
    assert sign(dpkg_compare(left, right)) == sign(version_compare(left, right))


def test_version_order_on_the_real_corpus_matches_python_debian(corpus_files: list[Path]) -> None:
    repository = load_cached(corpus_files)
    versions = sorted({p.version for p in repository.packages})
    rnd = random.Random(7)
    pairs = [(rnd.choice(versions), rnd.choice(versions)) for _ in range(20_000)]
    pairs += [(v[0].version, v[1].version) for v in repository.by_name.values() if len(v) > 1]
    wrong = [(a, b) for a, b in pairs if sign(dpkg_compare(a, b)) != sign(version_compare(a, b))]
    assert wrong == []


def package(name: str, version: str = "1", **fields: object) -> Package:
    return Package(name, version, "amd64", **fields)  # type: ignore[arg-type]


def test_satisfaction_rules() -> None:
    repo = Repository(
        [
            package("libfoo", "2.0", multi_arch="allowed"),
            package("libfoo", "1.0"),
            package("python3", "3.11", multi_arch="allowed"),
            package("perl", "5.36"),
            package(
                "postfix",
                provides=(Relation("mail-transport-agent"),),
                conflicts=(Relation("mail-transport-agent"),),
            ),
            package("libbar", provides=(Relation("bar-api", "=", "3"),)),
        ]
    )
    found = lambda *args: sorted(str(p) for p in repo.satisfiers(Relation(*args)))  # noqa: E731
    assert found("libfoo", ">=", "1.5") == ["libfoo 2.0 (amd64)"]
    assert found("libfoo", "<<", "2.0") == ["libfoo 1.0 (amd64)"]
    assert found("mail-transport-agent") == ["postfix 1 (amd64)"]
    assert found("mail-transport-agent", ">=", "1") == []  # unversioned Provides
    assert found("bar-api", ">=", "2") == ["libbar 1 (amd64)"]  # versioned Provides
    assert found("python3", None, None, "any") == ["python3 3.11 (amd64)"]
    assert found("perl", None, None, "any") == []  # not Multi-Arch: allowed
    assert found("perl", None, None, "i386") == []  # another architecture
    postfix = repo.by_name["postfix"][0]
    assert repo.conflicting(postfix) == set()  # not with itself through its own Provides
    assert [p.version for p in repo.by_name["libfoo"]] == ["2.0", "1.0"]  # newest first


def test_a_package_providing_its_own_name_satisfies_once() -> None:
    repo = Repository([package("clinfo", "3.0", provides=(Relation("clinfo"),))])
    assert len(repo.satisfiers(Relation("clinfo"))) == 1


def test_rpm_rule_bare_provides_match_any_version() -> None:
    packages = [package("kernel-core", "6.1", provides=(Relation("kmod-api"),))]
    wanted = Relation("kmod-api", ">=", "2")
    assert Repository(packages).satisfiers(wanted) == ()  # dpkg
    assert len(Repository(packages, bare_provides_match_versions=True).satisfiers(wanted)) == 1
