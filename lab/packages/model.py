"""The in-memory model of a package repository, and Debian's rules for what satisfies what.

Index readers (lab/packages/debian.py, lab/packages/rpm.py) turn Debian `Packages` files or RPM
`primary.xml` into a Repository; the solver (lab/packages/solve.py) asks it which packages
satisfy a relation.

The rules, as dpkg applies them on one architecture:
- a relation `name (op version)` is satisfied by a real package `name` whose version satisfies
  it, and by a package that Provides `name (= v)` with `v` satisfying it; an unversioned
  Provides satisfies only an unversioned relation;
- `name:any` is satisfied only by a package that is `Multi-Arch: allowed` (or by providers);
  `name:native` and `name:<our arch>` like plain `name`; any other architecture never (this
  lab resolves one architecture);
- a package never conflicts with itself, also not through a name it Provides.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

Compare = Callable[[str, str], int]


@dataclass(frozen=True, slots=True)
class Relation:
    name: str
    op: str | None = None  # << <= = >= >>, or None: any version
    version: str | None = None
    arch: str | None = None  # the `:qualifier`, e.g. any, native, i386

    def __reduce__(self) -> tuple[type, tuple[str | None, ...]]:
        # A plain constructor call: unpickling 100k of these stays fast (the index cache).
        return Relation, (self.name, self.op, self.version, self.arch)

    def __str__(self) -> str:
        qualifier = f":{self.arch}" if self.arch else ""
        constraint = f" ({self.op} {self.version})" if self.op else ""
        return f"{self.name}{qualifier}{constraint}"


Alternatives = tuple[Relation, ...]  # `a | b | c`: any one of them


@dataclass(slots=True)
class Package:
    name: str
    version: str
    arch: str
    depends: tuple[Alternatives, ...] = ()
    pre_depends: tuple[Alternatives, ...] = ()
    provides: tuple[Relation, ...] = ()  # op "=" with a version, or unversioned
    conflicts: tuple[Relation, ...] = ()
    breaks: tuple[Relation, ...] = ()
    essential: bool = False
    priority: str = ""
    multi_arch: str = ""  # "", same, foreign, allowed
    filename: str = ""
    sha256: str = ""
    size: int = 0
    origin: str = ""  # the index file it came from
    line: int = 0  # where its stanza starts in that file
    extra: dict[str, str] = field(default_factory=dict)  # other fields, kept for re-emitting

    @property
    def key(self) -> tuple[str, str, str]:
        return self.name, self.version, self.arch

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return Package, tuple(getattr(self, f.name) for f in fields(Package))

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.arch})"

    def requirements(self) -> tuple[Alternatives, ...]:
        """Pre-Depends and Depends: both must hold inside a closed package list."""
        return self.pre_depends + self.depends

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Package) and self.key == other.key


_SEGMENTS = re.compile(r"(\D*)(\d*)")


def _character_order(character: str) -> int:
    """dpkg's order: `~` before the end of the string, letters before everything else."""
    if character == "~":
        return -1
    return ord(character) if character.isalpha() else ord(character) + 256


def _part_key(text: str) -> tuple[int, ...]:
    """A flat tuple of ints ordered as dpkg orders version parts. Each non-digit/digit segment
    is its characters' orders, then 0 (dpkg's end of string), then its number; the part ends
    with a 0. A following segment always starts with a non-zero character order, so no key is
    a strict prefix of another and plain tuple comparison is exact. dpkg treats "" as "0"."""
    key: list[int] = []
    for letters, digits in _SEGMENTS.findall(text or "0"):
        if letters or digits:
            key.extend(map(_character_order, letters))
            key += (0, int(digits or 0))
    key.append(0)
    return tuple(key)


@functools.cache
def dpkg_version_key(version: str) -> tuple:
    """A sort key that orders version strings exactly as dpkg does (epoch, upstream, revision),
    so that comparing two versions is a tuple comparison instead of a parse."""
    epoch, _, rest = version.partition(":") if ":" in version else ("0", "", version)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), _part_key(upstream), _part_key(revision)


def dpkg_compare(left: str, right: str) -> int:
    a, b = dpkg_version_key(left), dpkg_version_key(right)
    return (a > b) - (a < b)


def satisfies_version(version: str, op: str | None, wanted: str | None, compare: Compare) -> bool:
    if op is None or wanted is None:
        return True
    order = compare(version, wanted)
    return {
        "<<": order < 0,
        "<=": order <= 0,
        "=": order == 0,
        ">=": order >= 0,
        ">>": order > 0,
    }[op]


class Repository:
    """Packages of one architecture (plus `all`), with the lookups the solver needs."""

    def __init__(
        self,
        packages: Iterable[Package],
        *,
        arch: str = "amd64",
        compare: Compare = dpkg_compare,
        bare_provides_match_versions: bool = False,
    ) -> None:
        """``bare_provides_match_versions``: rpm's rule, under which a Provides without a
        version satisfies any versioned requirement; dpkg's (the default) says it does not."""
        self.arch = arch
        self.bare_provides_match_versions = bare_provides_match_versions
        self.compare: Compare = functools.lru_cache(maxsize=None)(compare)
        unique: dict[tuple[str, str, str], Package] = {}
        for package in packages:
            unique.setdefault(package.key, package)  # the same package in two indexes: once
        self.packages = list(unique.values())
        self.by_name: dict[str, list[Package]] = defaultdict(list)
        self.provided_by: dict[str, list[tuple[Package, Relation]]] = defaultdict(list)
        for package in self.packages:
            self.by_name[package.name].append(package)
            for provided in package.provides:
                self.provided_by[provided.name].append((package, provided))

        def newer_first(a: Package, b: Package) -> int:
            return self.compare(b.version, a.version)

        newest_first = functools.cmp_to_key(newer_first)
        for versions in self.by_name.values():
            versions.sort(key=newest_first)
        self._satisfiers: dict[Relation, tuple[Package, ...]] = {}

    def __len__(self) -> int:
        return len(self.packages)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a real package or a name something provides."""
        return name in self.by_name or name in self.provided_by

    def version_rank(self, package: Package) -> int:
        """0 for the newest version of its name in the whole repository, 1 for the next..."""
        return self.by_name[package.name].index(package)

    def satisfiers(self, relation: Relation) -> tuple[Package, ...]:
        """Every package that satisfies ``relation`` (cached: relations repeat a lot)."""
        found = self._satisfiers.get(relation)
        if found is None:  # once each: a package may Provide its own name
            found = self._satisfiers[relation] = tuple(
                dict.fromkeys(self._find_satisfiers(relation))
            )
        return found

    def _find_satisfiers(self, relation: Relation) -> Iterable[Package]:
        if relation.arch not in (None, "any", "native", self.arch):
            return  # another architecture: never here
        for package in self.by_name.get(relation.name, ()):
            if relation.arch == "any" and package.multi_arch != "allowed":
                continue
            if satisfies_version(package.version, relation.op, relation.version, self.compare):
                yield package
        for package, provided in self.provided_by.get(relation.name, ()):
            if (
                relation.op is None
                or (provided.op is None and self.bare_provides_match_versions)
                or (
                    provided.op == "="
                    and satisfies_version(
                        provided.version or "", relation.op, relation.version, self.compare
                    )
                )
            ):
                yield package

    def conflicting(self, package: Package) -> set[Package]:
        """The packages ``package`` cannot be installed with (Conflicts and Breaks; a closed
        list is installed at once, so Breaks forbids as much as Conflicts)."""
        return {
            other
            for relation in package.conflicts + package.breaks
            for other in self.satisfiers(relation)
            if other != package
        }
