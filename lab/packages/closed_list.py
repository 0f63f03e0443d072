"""The solver's output: the closed, fully versioned package list, the `cernvm-system`
meta-package that pins it, a diff between two lists, and two independent closure checks.

Closure is checked twice: by our own rules (every requirement satisfied inside the list, no
conflict, one version per name, every Essential name present) and by Debian's dose-distcheck,
which nobody here wrote, run on the list as a repository of its own.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from lab import proc
from lab.messages import clip
from lab.packages.debian import version_problem, write_packages
from lab.packages.model import Compare, Package, Relation, Repository
from lab.packages.solve import Wanted, essential_names

META_PACKAGE = "cernvm-system"
VERSION_RULE = "a Debian version is [epoch:]upstream[-revision], e.g. 1.0 or 2:1.4-3"
JSON_EXPECTED = 'a closed-list.json written by ucvm-lab solve ({"packages": [...]})'


class ClosedListError(ValueError):
    """A closed list or meta-package input that cannot be used: "FILE: problem; expected ..."."""


def meta_version_problem(version: str) -> str | None:
    """Why ``version`` cannot be the meta-package's version (it goes into the control file and
    the .deb's file name), or None."""
    problem = version_problem(version)
    return f"{problem}; {VERSION_RULE}" if problem else None


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    arch: str
    filename: str
    sha256: str


def entries(packages: Sequence[Package]) -> list[Entry]:
    return sorted(
        (Entry(p.name, p.version, p.arch, p.filename, p.sha256) for p in packages),
        key=lambda e: e.name,
    )


def write_text(packages: Sequence[Package], path: Path) -> None:
    path.write_text(
        "".join(
            f"{e.name} {e.version} {e.arch} {e.filename} {e.sha256}\n" for e in entries(packages)
        )
    )


def write_json(packages: Sequence[Package], path: Path, **provenance: object) -> None:
    document = {**provenance, "packages": [asdict(e) for e in entries(packages)]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def read_json(path: Path) -> list[Entry]:
    """The entries of a closed-list.json; ClosedListError names the file and what is wrong."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as error:
        raise ClosedListError(
            f"{path}: cannot read it ({error.strerror}); expected {JSON_EXPECTED}"
        ) from error
    except json.JSONDecodeError as error:
        raise ClosedListError(
            f"{path}:{error.lineno}: not JSON ({error.msg}); expected {JSON_EXPECTED}"
        ) from error
    except UnicodeDecodeError as error:
        raise ClosedListError(f"{path}: not UTF-8 text; expected {JSON_EXPECTED}") from error
    packages = document.get("packages") if isinstance(document, dict) else None
    if not isinstance(packages, list):
        raise ClosedListError(f'{path}: no "packages" list; expected {JSON_EXPECTED}')
    return [json_entry(path, number, entry) for number, entry in enumerate(packages)]


ENTRY_FIELDS = tuple(f.name for f in fields(Entry))


def json_entry(path: Path, number: int, entry: object) -> Entry:
    if (
        not isinstance(entry, dict)
        or set(entry) != set(ENTRY_FIELDS)
        or not all(isinstance(value, str) for value in entry.values())
    ):
        raise ClosedListError(
            f"{path}: packages[{number}] is {clip(json.dumps(entry))}; expected an object of "
            f"the strings {', '.join(ENTRY_FIELDS)}"
        )
    return Entry(**entry)


def build_meta_package(
    packages: Sequence[Package], out_dir: Path, *, version: str, name: str = META_PACKAGE
) -> Path:
    """A real .deb whose Depends pin every package of the list with `=`."""
    if problem := meta_version_problem(version):  # the CLI checks too: this guards other callers
        raise ClosedListError(f"meta-package {name}: {problem}")
    depends = ", ".join(f"{e.name} (= {e.version})" for e in entries(packages))
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: ucvm-lab <ucvm-lab@localhost>\nSection: metapackages\nPriority: optional\n"
        f"Depends: {depends}\n"
        f"Description: closed package list of the appliance ({len(packages)} packages)\n"
        " Pins every package of the solver's closed list to its exact version.\n"
    )
    with tempfile.TemporaryDirectory(prefix="ucvm-meta-") as work:
        (Path(work) / "DEBIAN").mkdir()
        (Path(work) / "DEBIAN" / "control").write_text(control)
        deb = out_dir / f"{name}_{version}_all.deb"
        # OSError: the CLI's solve reports it as incomplete results, like a full disk
        proc.run("dpkg-deb", "--root-owner-group", "--build", work, deb, error=OSError)
    return deb


def meta_package_depends(deb: Path) -> list[tuple[str, str]]:
    """(name, version) pairs of the .deb's Depends, read back with dpkg-deb."""
    field = proc.run("dpkg-deb", "--field", deb, "Depends", error=OSError).stdout
    return re.findall(r"([^\s,(]+) \(= ([^)]+)\)", field)


@dataclass
class Diff:
    added: list[Entry]
    removed: list[Entry]
    upgraded: list[tuple[Entry, Entry]]
    downgraded: list[tuple[Entry, Entry]]

    def lines(self) -> list[str]:
        return [
            *(f"+ {e.name} {e.version}" for e in self.added),
            *(f"- {e.name} {e.version}" for e in self.removed),
            *(f"↑ {a.name} {a.version} -> {b.version}" for a, b in self.upgraded),
            *(f"↓ {a.name} {a.version} -> {b.version}" for a, b in self.downgraded),
        ]


def diff(old: Sequence[Entry], new: Sequence[Entry], compare: Compare) -> Diff:
    before, after = {e.name: e for e in old}, {e.name: e for e in new}
    changed = [
        (before[n], after[n])
        for n in sorted(before.keys() & after.keys())
        if before[n].version != after[n].version
    ]
    return Diff(
        added=[after[n] for n in sorted(after.keys() - before.keys())],
        removed=[before[n] for n in sorted(before.keys() - after.keys())],
        upgraded=[(a, b) for a, b in changed if compare(a.version, b.version) < 0],
        downgraded=[(a, b) for a, b in changed if compare(a.version, b.version) > 0],
    )


def closure_problems(
    repository: Repository, packages: Sequence[Package], wanted: Sequence[Wanted]
) -> list[str]:
    """Our own check: what makes ``packages`` not a closed, installable list."""
    chosen = set(packages)
    problems = []
    conflicts: set[frozenset[Package]] = set()
    names: dict[str, Package] = {}
    for package in packages:
        if package.name in names:
            problems.append(f"two versions of {package.name}: {names[package.name]}, {package}")
        names[package.name] = package
        for clause in package.requirements():
            if not any(q in chosen for rel in clause for q in repository.satisfiers(rel)):
                needs = " | ".join(map(str, clause))
                problems.append(f"{package} needs {needs}: not in the list")
        conflicts |= {
            frozenset((package, other))
            for other in repository.conflicting(package) & chosen
            if other.name != package.name
        }
    for item in wanted:
        if not chosen & set(item.candidates(repository)):
            problems.append(f"wanted {item} is not in the list")
    problems += [
        f"{a} conflicts with {b}"
        for a, b in (sorted(pair, key=lambda p: p.key) for pair in conflicts)
    ]
    problems += [
        f"Essential {name} is not in the list"
        for name in essential_names(repository)
        if name not in names
    ]
    return problems


@dataclass
class DoseReport:
    total: int
    broken: int
    output: str

    @property
    def ok(self) -> bool:
        return self.broken == 0 and self.total > 0


def pinning_stanza(packages: Sequence[Package]) -> Package:
    """The meta-package as dose-distcheck sees it: Depends on every package with `=`."""
    pins = tuple((Relation(e.name, "=", e.version),) for e in entries(packages))
    return Package(META_PACKAGE, "0", "all", depends=pins)


def dose_distcheck(packages: Sequence[Package], arch: str = "amd64") -> DoseReport:
    """Debian's dose-distcheck on the list as a repository, plus the pinning meta-package:
    each package must be installable using only packages of the list, and so must the
    meta-package, which needs all of them at once (so conflicts inside the list count)."""
    if not shutil.which("dose-distcheck"):
        raise FileNotFoundError("dose-distcheck is not installed; run scripts/setup.sh")
    with tempfile.TemporaryDirectory(prefix="ucvm-dose-") as work:
        index = Path(work) / "Packages"
        write_packages([*packages, pinning_stanza(packages)], index)
        run = proc.run(
            "dose-distcheck", f"--deb-native-arch={arch}", "-f", "-e", f"deb://{index}",
            check=False,  # it exits non-zero when a package is broken: the report says which
            error=FileNotFoundError,
        )  # fmt: skip
    total = re.search(r"total-packages: (\d+)", run.stdout)
    broken = re.search(r"broken-packages: (\d+)", run.stdout)
    if not total or not broken:
        raise RuntimeError(f"dose-distcheck said nothing usable: {run.stdout[-400:]}{run.stderr}")
    return DoseReport(int(total.group(1)), int(broken.group(1)), run.stdout)
