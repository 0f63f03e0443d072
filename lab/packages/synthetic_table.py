"""The synthetic generator's table: one row per package name (its layer, versions, role, and
per version its Depends, Pre-Depends, Provides, Conflicts and Breaks), drawn step by step from
one seeded random.Random.

lab/packages/synthetic.py turns the table into Packages and a Repository; this module decides
the shape (the rules are in that module's docstring): names in layers with Zipf-like
popularity, the world that makes every default list feasible, its rivals and the broken names,
virtual names, versioned dependencies, cycles, Conflicts and Breaks. `draw_table` runs the
steps in a fixed order, so the same seed and size draw the same table.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from lab.packages.model import Alternatives, Relation

LAYERS = (0.03, 0.07, 0.10, 0.12, 0.14, 0.16, 0.18, 0.20)  # share of the names per layer
VERSION_COUNTS = (1, 2, 3, 4)
VERSION_WEIGHTS = (0.40, 0.18, 0.21, 0.21)  # 2.2 versions per name on average
DEPENDS_MEAN = (1.0, 2.2, 3.7, 4.05, 4.05, 4.05, 4.05, 4.05)  # per layer, before version changes
ZIPF_OFFSET = 25  # weight of name i as a dependency target: 1 / (i + ZIPF_OFFSET)
PREFIXES = (
    ("lib",),
    ("lib",),
    ("lib", "lib", "python3-", "perl-"),
    ("lib", "python3-", "node-", "golang-", "perl-"),
    ("python3-", "node-", "golang-", "r-cran-", "lib", ""),
    ("python3-", "node-", "ruby-", "", ""),
    ("", "", "", "python3-", "fonts-"),
    ("", "", "", "", "xfce4-", "gnome-"),
)
# fmt: off
SYLLABLES = ("ka", "ro", "li", "ne", "su", "to", "mi", "da", "ve", "po", "zu", "xe", "bo", "fi",
             "gra", "tel", "mon", "dex", "pix", "syn", "cor", "lu", "ja", "qi")
# fmt: on


# --- the names: layers, versions, roles ----------------------------------------------------


@dataclass
class Name:
    index: int
    name: str
    layer: int
    versions: list[str]  # ascending
    ceiling: str  # a version above all of them (for `<<` caps)
    floor: str  # a version below all of them (for stale Breaks)
    arch: str
    multi_arch: str
    role: str = "lib"  # essential | lib | rival | broken
    world: int | None = 0  # the world's version (an index into versions); None: not in it
    rival: int | None = None  # for a rival: the world name it stands in for
    depends: list[list[Alternatives]] = field(default_factory=list)  # per version
    pre_depends: list[list[Alternatives]] = field(default_factory=list)
    provides: list[list[Relation]] = field(default_factory=list)
    conflicts: list[list[Relation]] = field(default_factory=list)
    breaks: list[list[Relation]] = field(default_factory=list)

    @property
    def in_world(self) -> bool:
        return self.world is not None

    @property
    def targetable(self) -> bool:
        return self.role in ("lib", "rival")

    def each_version(self) -> range:
        return range(len(self.versions))


@dataclass
class _Virtual:
    name: str
    kind: str  # plain | versioned | exclusive
    layer: int
    default: int  # the world provider
    providers: list[int]


def _versions(rng: random.Random) -> tuple[list[str], str, str]:
    count = rng.choices(VERSION_COUNTS, VERSION_WEIGHTS)[0]
    epoch = "1:" if rng.random() < 0.04 else ""
    major, minor = rng.randint(0, 9), rng.randint(0, 20)
    versions = [f"{epoch}{major}.{minor}-{rng.randint(1, 5)}"]
    for _ in range(count - 1):
        if rng.random() < 0.25:
            versions.append(
                f"{versions[-1]}+deb12u1" if "+" not in versions[-1] else f"{versions[-1]}.1"
            )
            continue
        major, minor = (major + 1, 0) if rng.random() < 0.3 else (major, minor + rng.randint(1, 3))
        versions.append(f"{epoch}{major}.{minor}-{rng.randint(1, 5)}")
    return versions, f"{epoch}{major + 1}~", f"{epoch}0~"


def _layer_sizes(names: int) -> list[int]:
    sizes = [max(2, round(names * share)) for share in LAYERS]
    sizes[-1] += names - sum(sizes)
    return sizes


def _make_names(rng: random.Random, names: int) -> list[Name]:
    made: list[Name] = []
    for layer, size in enumerate(_layer_sizes(names)):
        for _ in range(size):
            index = len(made)
            stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
            name = f"{rng.choice(PREFIXES[layer])}{stem}{index}"
            versions, ceiling, floor = _versions(rng)
            arch = "all" if layer >= 3 and rng.random() < 0.25 else "amd64"
            made.append(
                Name(
                    index,
                    name,
                    layer,
                    versions,
                    ceiling,
                    floor,
                    arch,
                    _multi_arch(rng, layer, arch),
                )
            )
    for entry in made:
        entry.world = _world_version(rng, entry)
        for per_version in ("depends", "pre_depends", "provides", "conflicts", "breaks"):
            setattr(entry, per_version, [[] for _ in entry.versions])
    return made


def _multi_arch(rng: random.Random, layer: int, arch: str) -> str:
    draw = rng.random()
    if layer <= 2 and draw < 0.02:
        return "allowed"  # an interpreter: `name:any` may depend on it
    if arch == "amd64" and layer <= 3 and draw < 0.45:
        return "same"
    return "foreign" if draw > 0.9 else ""


def _world_version(rng: random.Random, entry: Name) -> int:
    """Mostly the newest; sometimes an older one, so the world is not simply "all newest"."""
    newest = len(entry.versions) - 1
    return newest if rng.random() < 0.8 else rng.randint(0, newest)


def _assign_essentials(names: list[Name]) -> list[Name]:
    layer0 = [entry for entry in names if entry.layer == 0]
    count = min(23, max(4, len(names) // 700), len(layer0) // 2)
    essentials = layer0[-count:]  # the end of layer 0: they depend on the base libraries
    for entry in essentials:
        entry.role = "essential"
    return essentials


def _assign_broken(rng: random.Random, names: list[Name]) -> list[Name]:
    top = [entry for entry in names if entry.layer == len(LAYERS) - 1]
    broken = rng.sample(top, max(2, len(names) // 2000))
    for entry in sorted(broken, key=lambda e: e.index):
        entry.role, entry.world = "broken", None
    return sorted(broken, key=lambda e: e.index)


def _by_layer(names: list[Name]) -> list[list[Name]]:
    """The names of each layer that are plain world libraries (no role yet)."""
    layers: list[list[Name]] = [[] for _ in LAYERS]
    for entry in names:
        if entry.role == "lib" and entry.in_world:
            layers[entry.layer].append(entry)
    return layers


def _providers(rng: random.Random, pool: list[Name], used: set[int]) -> list[Name]:
    """1-4 names of ``pool`` that provide nothing yet (drawn with rejection: pools are big)."""
    count = rng.randint(1, 4)
    chosen: list[Name] = []
    for _ in range(count * 3):
        candidate = rng.choice(pool)
        if candidate.index not in used:
            used.add(candidate.index)
            chosen.append(candidate)
        if len(chosen) == count:
            break
    return chosen


def _make_virtuals(rng: random.Random, names: list[Name]) -> list[_Virtual]:
    """Virtual names in layers 1..5, each with a world provider; exclusive ones make their
    other providers rivals. Providers Provide the name (versioned or not)."""
    virtuals: list[_Virtual] = []
    used: set[int] = set()
    pools = _by_layer(names)
    for number in range(max(3, len(names) // 25)):
        layer = rng.randint(1, 5)
        kind = rng.choices(("plain", "versioned", "exclusive"), (0.45, 0.4, 0.15))[0]
        providers = _providers(rng, pools[layer], used)
        if not providers:
            continue
        stem = "".join(rng.choice(SYLLABLES) for _ in range(2))
        indices = [p.index for p in providers]
        virtual = _Virtual(f"{stem}-{kind[:4]}-{number}", kind, layer, indices[0], indices)
        _provide(rng, names, virtual)
        virtuals.append(virtual)
    return virtuals


def _provide(rng: random.Random, names: list[Name], virtual: _Virtual) -> None:
    for index in virtual.providers:
        provider = names[index]
        versioned = virtual.kind == "versioned" and (index == virtual.default or rng.random() < 0.5)
        for version in provider.each_version():
            provided = (
                Relation(virtual.name, "=", f"{version + 1}.0")
                if versioned
                else Relation(virtual.name)
            )
            provider.provides[version].append(provided)
            if virtual.kind == "exclusive":
                provider.conflicts[version].append(Relation(virtual.name))
        if virtual.kind == "exclusive" and index != virtual.default:
            provider.role, provider.world, provider.rival = "rival", None, virtual.default


def _assign_rivals(rng: random.Random, names: list[Name], virtuals: list[_Virtual]) -> None:
    """About 2% of the names become rivals of a world name in the same layer; half of them
    Conflict with it (a conflict between two alternatives)."""
    providers = {index for virtual in virtuals for index in virtual.providers}
    for entry in names:
        if entry.layer == 0 or entry.role != "lib" or entry.index in providers:
            continue
        if rng.random() >= 0.02:
            continue
        peers = [
            e
            for e in names[entry.index - 30 : entry.index]
            if e.layer == entry.layer and e.role == "lib" and e.in_world
        ]
        if not peers:
            continue
        rival = rng.choice(peers)
        entry.role, entry.world, entry.rival = "rival", None, rival.index
        if rng.random() < 0.5:
            for version in entry.each_version():
                entry.conflicts[version].append(Relation(rival.name))


# --- dependencies ---------------------------------------------------------------------------


@dataclass
class _Dependency:
    target: int  # a name's index, or -1 with a virtual name
    virtual: _Virtual | None
    style: str  # plain | ge | lt
    level: int  # the version index a `>=` or `<<` refers to, for a version outside the world
    since: int  # the first version of the depending name that has it
    until: int  # one past the last
    pre: bool
    alternative: int | None  # a world name offered as `target | alternative`


class _Picker:
    """Dependency targets: a lower layer's names, the more popular the lower their index."""

    def __init__(self, names: list[Name], virtuals: list[_Virtual]) -> None:
        self.names = names
        total, self.cumulative = 0.0, []
        for entry in names:
            total += 1.0 / (entry.index + ZIPF_OFFSET) if entry.targetable else 0.0
            self.cumulative.append(total)
        self.layer_start = [0] * (len(LAYERS) + 1)
        for entry in names:
            self.layer_start[entry.layer + 1] = entry.index + 1
        self.virtuals_below = [
            [v for v in virtuals if v.layer < layer] for layer in range(len(LAYERS))
        ]
        self.rivals = [e.index for e in names if e.role == "rival"]

    def below(self, rng: random.Random, entry: Name) -> int | None:
        """A targetable name below ``entry`` (layer 0: a base library before it)."""
        end = entry.index if entry.layer == 0 else self.layer_start[entry.layer]
        if end == 0 or self.cumulative[end - 1] == 0.0:
            return None
        target = bisect.bisect_right(
            self.cumulative, rng.random() * self.cumulative[end - 1], 0, end
        )
        return target if self.names[target].role != "essential" else None

    def anywhere(self, rng: random.Random) -> int:
        return bisect.bisect_right(self.cumulative, rng.random() * self.cumulative[-1])


def _dependencies(rng: random.Random, picker: _Picker, entry: Name) -> list[_Dependency]:
    mean = DEPENDS_MEAN[entry.layer]
    count = round(rng.gammavariate(2.0, mean / 2.0)) if entry.layer else rng.randint(0, 2)
    chosen: list[_Dependency] = []
    targets: set[int | str] = set()
    for _ in range(min(count, 14)):
        dependency = _dependency(rng, picker, entry)
        if dependency is None:
            continue
        key = dependency.virtual.name if dependency.virtual else dependency.target
        if key not in targets:
            targets.add(key)
            chosen.append(dependency)
    return chosen


def _span(rng: random.Random, count: int) -> tuple[int, int]:
    """The versions of the depending name that have a dependency: all of them, or (newer
    versions add it) from a later one, or (newer versions drop it) up to an earlier one."""
    draw = rng.random()
    if count > 1 and draw < 0.12:
        return rng.randint(1, count - 1), count
    if count > 1 and draw < 0.20:
        return 0, rng.randint(1, count - 1)
    return 0, count


def _dependency(rng: random.Random, picker: _Picker, entry: Name) -> _Dependency | None:
    since, until = _span(rng, len(entry.versions))
    pre = rng.random() < 0.02
    virtuals = picker.virtuals_below[entry.layer]
    if virtuals and rng.random() < 0.05:
        virtual = rng.choice(virtuals)
        style = "ge" if virtual.kind == "versioned" and rng.random() < 0.6 else "plain"
        return _Dependency(-1, virtual, style, rng.randint(0, 3), since, until, pre, None)
    target = picker.below(rng, entry)
    if target is None:
        return None
    style = rng.choices(("plain", "ge", "lt"), (0.72, 0.24, 0.04))[0]
    level = rng.randrange(len(picker.names[target].versions))
    alternative = _alternative(rng, picker, entry, target)
    return _Dependency(target, None, style, level, since, until, pre, alternative)


def _alternative(rng: random.Random, picker: _Picker, entry: Name, target: int) -> int | None:
    """`target | other`: always when ``target`` is a rival and ``entry`` is in the world (the
    world needs a way out), else for 7% of the dependencies."""
    chosen = picker.names[target]
    if chosen.role == "rival" and (entry.in_world or rng.random() < 0.5):
        return chosen.rival
    if rng.random() < 0.07:
        other = picker.below(rng, entry)
        if other is not None and other != target and picker.names[other].in_world:
            return other
    return None


def _realise(names: list[Name], entry: Name, dependency: _Dependency) -> None:
    """Write ``dependency`` into each version of ``entry`` that has it, world-consistently."""
    for version in range(dependency.since, dependency.until):
        in_world = entry.world == version
        if dependency.virtual is not None:
            clause = _virtual_clause(names, dependency, version, len(entry.versions), in_world)
        else:
            clause = _clause(names, dependency, version, len(entry.versions), in_world)
        per_version = entry.pre_depends if dependency.pre else entry.depends
        per_version[version].append(clause)


def _level(dependency: _Dependency, version: int, count: int, levels: int) -> int:
    """Newer versions of the depending name need newer versions of the target."""
    if count == 1:
        return dependency.level
    return min(levels - 1, round(version * (levels - 1) / (count - 1)))


def _clause(
    names: list[Name], dependency: _Dependency, version: int, count: int, in_world: bool
) -> Alternatives:
    target = names[dependency.target]
    first = _relation(target, dependency, version, count, in_world)
    if dependency.alternative is None:
        return (first,)
    return first, Relation(names[dependency.alternative].name)


def _relation(
    target: Name, dependency: _Dependency, version: int, count: int, in_world: bool
) -> Relation:
    arch = "any" if target.multi_arch == "allowed" and dependency.level % 2 else None
    levels = len(target.versions)
    if dependency.style == "ge":
        level = _level(dependency, version, count, levels)
        if in_world and target.world is not None:
            level = min(level, target.world)
        return Relation(target.name, ">=", target.versions[level], arch)
    if dependency.style == "lt":
        if in_world and target.world is not None:
            above = target.world + 1
            cap = target.versions[above] if above < levels else target.ceiling
        else:
            cap = target.versions[dependency.level] if dependency.level else target.ceiling
        return Relation(target.name, "<<", cap, arch)
    return Relation(target.name, arch=arch)


def _virtual_clause(
    names: list[Name], dependency: _Dependency, version: int, count: int, in_world: bool
) -> Alternatives:
    virtual = dependency.virtual
    assert virtual is not None
    default = names[virtual.default]
    if virtual.kind == "exclusive" and dependency.level % 2:
        return Relation(default.name), Relation(virtual.name)  # `default-mta | mta`
    if dependency.style != "ge":
        return (Relation(virtual.name),)
    levels = len(default.versions)  # the default provider Provides `name (= 1.0)`, `(= 2.0)`..
    level = min(_level(dependency, version, count, levels), levels - 1)
    if in_world:
        level = min(level, default.world or 0)
    return (Relation(virtual.name, ">=", f"{level + 1}.0"),)


def _make_dependencies(rng: random.Random, names: list[Name], picker: _Picker) -> None:
    for entry in names:
        if entry.role == "essential":
            continue  # made below, among the base libraries
        for dependency in _dependencies(rng, picker, entry):
            _realise(names, entry, dependency)
    for entry in names:
        if entry.role == "essential":
            for dependency in _dependencies(rng, picker, entry):
                dependency.style = "plain"
                _realise(names, entry, dependency)


def _make_cycles(rng: random.Random, names: list[Name]) -> int:
    """Mutual dependencies between two world names of one layer (layers 2..6)."""
    made = 0
    pools = _by_layer(names)
    for _ in range(max(3, len(names) // 800)):
        pool = pools[rng.randint(2, len(LAYERS) - 2)]
        if len(pool) < 2:
            continue
        first, second = rng.sample(pool, 2)
        for one, other in ((first, second), (second, first)):
            for version in one.each_version():
                one.depends[version].append((Relation(other.name),))
        made += 1
    return made


# --- conflicts -------------------------------------------------------------------------------


def _make_conflicts(rng: random.Random, names: list[Name], picker: _Picker) -> None:
    for entry in names:
        if entry.role == "essential":
            continue
        draw = rng.random()
        if draw < 0.04 and picker.rivals:
            _conflict_with_rival(rng, names, entry, picker)
        elif draw < 0.12:
            _versioned_break(rng, names, entry, picker, field_name="breaks")
        elif draw < 0.14:
            _versioned_break(rng, names, entry, picker, field_name="conflicts")
        elif draw < 0.22:
            _stale_break(names, entry, picker.anywhere(rng))


def _conflict_with_rival(
    rng: random.Random, names: list[Name], entry: Name, picker: _Picker
) -> None:
    rival = names[rng.choice(picker.rivals)]
    if rival.index == entry.index:
        return
    for version in entry.each_version():
        entry.conflicts[version].append(Relation(rival.name))


def _versioned_break(
    rng: random.Random, names: list[Name], entry: Name, picker: _Picker, *, field_name: str
) -> None:
    """`Breaks: t (<< v)`: only versions of t older than v; the world's version of t is never
    older than v when ``entry``'s world version carries it."""
    target = names[picker.anywhere(rng)]
    if target.index == entry.index or len(target.versions) < 2:
        _stale_break(names, entry, target.index)
        return
    chosen = rng.randint(1, len(target.versions) - 1)
    for version in entry.each_version():
        level = chosen
        if entry.world == version and target.world is not None:
            level = min(level, target.world)
        cap = target.versions[level] if level else target.floor
        getattr(entry, field_name)[version].append(Relation(target.name, "<<", cap))


def _stale_break(names: list[Name], entry: Name, target: int) -> None:
    """A Breaks against versions no longer in the archive: matches nothing."""
    if target == entry.index:
        return
    other = names[target]
    for version in entry.each_version():
        entry.breaks[version].append(Relation(other.name, "<<", other.floor))


def _make_broken(rng: random.Random, names: list[Name], broken: list[Name]) -> int:
    """One requirement nothing satisfies per broken name (in all its versions): a missing
    name, another architecture, or a version that does not exist. Returns how many."""
    made = 0
    for number, entry in enumerate(broken):
        other = names[rng.randrange(entry.index)]
        while not other.targetable:
            other = names[rng.randrange(entry.index)]
        relation = (
            Relation(f"missing-{number}"),
            Relation(other.name, arch="i386"),
            Relation(other.name, ">=", f"{other.ceiling}999"),
        )[number % 3]
        for version in entry.each_version():
            entry.depends[version].append((relation,))
            made += 1
    return made


# --- the whole table -------------------------------------------------------------------------


@dataclass
class Table:
    """The drawn table, and the counts the generator's Stats report."""

    names: list[Name]  # by index
    broken: list[Name]  # names with a requirement nothing satisfies
    virtual_names: int
    cycles: int
    unsatisfiable: int  # requirements that nothing satisfies, over all versions


def draw_table(rng: random.Random, names: int) -> Table:
    """A table of ``names`` names, every step drawing from ``rng`` in a fixed order."""
    table = _make_names(rng, names)
    _assign_essentials(table)
    broken = _assign_broken(rng, table)
    virtuals = _make_virtuals(rng, table)
    _assign_rivals(rng, table, virtuals)
    picker = _Picker(table, virtuals)
    _make_dependencies(rng, table, picker)
    cycles = _make_cycles(rng, table)
    _make_conflicts(rng, table, picker)
    unsatisfiable = _make_broken(rng, table, broken)
    return Table(table, broken, len(virtuals), cycles, unsatisfiable)


__all__ = ["LAYERS", "Name", "Table", "draw_table"]
