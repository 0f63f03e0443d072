"""Seeded synthetic repositories shaped like the paper's: about 17,000 names, several versions
of many, 500 wanted, about 160,000 inequalities when the whole repository is modelled.

The shape follows a Debian archive:
- names sit in layers (base libraries at the bottom, applications at the top); a dependency
  points to a lower layer, except a few mutual dependencies (cycles, as Debian has 13-30 in a
  solution); popular libraries are depended on far more often than others (Zipf-like);
- 60% of the names have 2-4 versions; newer versions sometimes need newer dependencies
  (`>=`), add a dependency or drop one, and some dependencies cap a version (`<<`);
- alternatives (`a | b`), virtual names with unversioned and versioned Provides, some of them
  exclusive (every provider Provides and Conflicts the name, as mail transport agents do);
- Conflicts and Breaks: between alternatives, against old versions only (`<< v`), and stale
  ones that match no version any more; a few Essential packages; a few packages with a
  requirement nothing satisfies (a missing name, another architecture, a version that does
  not exist), which nobody depends on.

Feasibility by construction: a *world* is chosen first, one version of most names, which is
closed (every requirement of a world package is satisfied inside the world) and free of
conflicts. The wanted names are drawn from the world, so every default shopping list has a
solution; ``Synthetic.world`` is that witness. Names outside the world are rivals (they
conflict with a world name, or are the non-default providers of an exclusive virtual name)
and the deliberately broken ones; a world package reaches a rival only through an
alternative that also offers a world package, or through a virtual name that a world package
provides.

Everything comes from one ``random.Random(seed)``: the same seed and size give the same
repository, byte for byte. The table of names and their relations is drawn in
lab/packages/synthetic_table.py; this module turns it into Packages and a Repository, and
writes the shopping list and a Packages file for external tools (libsolv, dose).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.packages.debian import write_packages
from lab.packages.model import Package, Repository
from lab.packages.synthetic_table import Name, draw_table


@dataclass
class Stats:
    names: int
    candidates: int  # (name, version) pairs: the whole-repository model's variables
    multi_version_names: int
    virtual_names: int
    essential: int
    dependency_clauses: int  # Depends + Pre-Depends entries over all candidates
    alternatives: int  # clauses with two or more alternatives
    versioned_dependencies: int  # relations with an operator
    unsatisfiable_dependencies: int  # deliberately: nothing in the repository satisfies them
    conflicts: int  # Conflicts entries over all candidates
    breaks: int  # Breaks entries over all candidates
    cycles: int  # mutual dependencies between two names
    world: int  # packages in the feasibility witness

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Synthetic:
    seed: int
    repository: Repository
    wanted: list[str]
    stats: Stats
    world: list[Package]  # closed and conflict-free: a solution for any list drawn from it
    eligible: list[str]  # world names a shopping list is drawn from, in the seed's order
    broken: list[str]  # names with a requirement nothing satisfies

    def with_wanted(self, count: int) -> Synthetic:
        """The same repository with another list size (lists of one seed are nested)."""
        return dataclasses.replace(self, wanted=choose_wanted(self.eligible, count))


# --- assembly --------------------------------------------------------------------------------


def _packages(rng: random.Random, entry: Name) -> Iterable[Package]:
    priority = (
        "required"
        if entry.role == "essential"
        else ("important" if entry.layer == 0 else "optional")
    )
    for version, text in enumerate(entry.versions):
        digest = hashlib.sha256(f"{entry.name}_{text}_{entry.arch}".encode()).hexdigest()
        yield Package(
            entry.name,
            text,
            entry.arch,
            depends=tuple(entry.depends[version]),
            pre_depends=tuple(entry.pre_depends[version]),
            provides=tuple(entry.provides[version]),
            conflicts=tuple(entry.conflicts[version]),
            breaks=tuple(entry.breaks[version]),
            essential=entry.role == "essential",
            priority=priority,
            multi_arch=entry.multi_arch,
            filename=f"pool/main/{entry.name[0]}/{entry.name}/"
            f"{entry.name}_{text.split(':')[-1]}_{entry.arch}.deb",
            sha256=digest,
            size=rng.randint(2_000, 4_000_000),
            origin="synthetic",
            extra={"Section": "libs" if entry.name.startswith("lib") else "misc"},
        )


def _stats(
    names: list[Name],
    packages: list[Package],
    virtuals: int,
    cycles: int,
    unsatisfiable: int,
    world: int,
) -> Stats:
    clauses = [clause for p in packages for clause in p.requirements()]
    return Stats(
        names=len(names),
        candidates=len(packages),
        multi_version_names=sum(1 for e in names if len(e.versions) > 1),
        virtual_names=virtuals,
        essential=sum(1 for e in names if e.role == "essential"),
        dependency_clauses=len(clauses),
        alternatives=sum(1 for clause in clauses if len(clause) > 1),
        versioned_dependencies=sum(1 for clause in clauses for r in clause if r.op),
        unsatisfiable_dependencies=unsatisfiable,
        conflicts=sum(len(p.conflicts) for p in packages),
        breaks=sum(len(p.breaks) for p in packages),
        cycles=cycles,
        world=world,
    )


def choose_wanted(eligible: list[str], count: int) -> list[str]:
    """The first ``count`` of the eligible names (already in a seeded order): the lists of one
    repository are nested, 100 inside 500 inside 2000."""
    if count > len(eligible):
        raise ValueError(f"{count} wanted, but only {len(eligible)} names are eligible")
    return eligible[:count]


def generate(seed: int, *, names: int = 17_000, wanted: int = 500) -> Synthetic:
    """A repository of ``names`` names and a shopping list of ``wanted`` of them, feasible."""
    if names < 200:
        raise ValueError(f"names={names}: a synthetic repository needs at least 200 names")
    rng = random.Random(seed)
    drawn = draw_table(rng, names)
    table = drawn.names
    per_name = [list(_packages(rng, entry)) for entry in table]
    packages = [package for versions in per_name for package in versions]
    world = [per_name[e.index][e.world] for e in table if e.world is not None]
    eligible = [e.name for e in table if e.in_world and e.role == "lib" and e.layer >= 2]
    rng.shuffle(eligible)
    stats = _stats(
        table, packages, drawn.virtual_names, drawn.cycles, drawn.unsatisfiable, len(world)
    )
    return Synthetic(
        seed,
        Repository(packages),
        choose_wanted(eligible, wanted),
        stats,
        world,
        eligible,
        [e.name for e in drawn.broken],
    )


def shopping_list(synthetic: Synthetic) -> str:
    """The wanted names, one per line (the solver's shopping-list format)."""
    return "".join(f"{name}\n" for name in synthetic.wanted)


def write_packages_file(synthetic: Synthetic, path: Path) -> Path:
    """The repository as a Debian `Packages` file, for external tools (libsolv, dose)."""
    write_packages(synthetic.repository.packages, path)
    return path
