"""Debian `Packages` files into a Repository, and back; dpkg's version syntax; the parsed-index
cache.

Indexes are split into stanzas here (for line numbers, and three times faster than
python-debian's deb822 reader), their relations parsed by python-debian's relation parser
(which keeps `<<`/`>>` and `:arch` qualifiers), and validated as dpkg would: a stanza the
reader cannot model exactly raises IndexFormatError naming the file, the line and the package,
rather than being guessed at.

`load_cached` parses a set of Debian indexes once and keeps the package list, pickled, in the
artifact store under the digest of the index files; `write_packages` writes packages back as a
Packages file that dpkg tools and dose-distcheck read. `pinned_corpus` finds the pinned
Debian 12 indexes the tests and benchmarks read in place.
"""

from __future__ import annotations

import gc
import os
import pickle
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from debian.deb822 import PkgRelation

from lab.artifacts import ArtifactStore, file_digest
from lab.messages import clip
from lab.packages.index import (
    IndexFormatError,
    check_index_file,
    open_for_writing,
    read_bytes,
)
from lab.packages.model import Alternatives, Package, Relation, Repository

# Part of the cache key: bump when parsing changes what a Package holds, or when the pickle's
# meaning changes (it names the classes by module: "2" since they moved to lab.packages.model).
READER_VERSION = "2"


# --- dpkg's syntax rules ---------------------------------------------------------------------

_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_RELATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")  # what python-debian accepts
_EPOCH = re.compile(r"[0-9]+")
_UPSTREAM = re.compile(r"[0-9][A-Za-z0-9.+~:-]*")
_REVISION = re.compile(r"[A-Za-z0-9.+~]+")
_INT_MAX = 2**31 - 1
VERSION_EXPECTED = "a dpkg version [epoch:]upstream[-revision], e.g. 1:2.36-9+deb12u7"

# dpkg still reads the obsolete `<` and `>` as `<=` and `>=` (with a warning), and so does apt:
# accept them with that meaning rather than reject an index dpkg installs from.
_OPERATORS = {"<<": "<<", "<=": "<=", "=": "=", ">=": ">=", ">>": ">>", "<": "<=", ">": ">="}


def version_problem(text: str) -> str | None:
    """Why dpkg would refuse ``text`` as a version, or None if it is a valid one.

    Stricter than dpkg in one way: an upstream version that does not start with a digit, or
    holds a character outside [A-Za-z0-9.+~:-], is only a warning for dpkg but an error for
    dpkg-deb and Debian policy; no archive carries one, so it is rejected here.
    """
    if not text.strip():
        return "the version is empty"
    if any(character.isspace() for character in text):
        return f"version {clip(text)} has embedded whitespace"
    epoch, colon, rest = text.partition(":")
    if not colon:
        epoch, rest = "0", text
    upstream, hyphen, revision = rest.rpartition("-")
    if not hyphen:
        upstream, revision = rest, ""
    return _part_problem(clip(text), epoch, upstream, revision, bool(hyphen))


def _part_problem(
    shown: str, epoch: str, upstream: str, revision: str, has_revision: bool
) -> str | None:
    if not _EPOCH.fullmatch(epoch):
        return f"the epoch of version {shown} is not a number"
    if int(epoch) > _INT_MAX:
        return f"the epoch of version {shown} is too big"
    if not upstream:
        return f"version {shown} has nothing after its epoch or before its revision"
    if not _UPSTREAM.fullmatch(upstream):
        return (
            f"the upstream part of version {shown} must start with a digit, then [A-Za-z0-9.+~:-]"
        )
    if has_revision and not _REVISION.fullmatch(revision):
        return f"the revision of version {shown} is empty or has a character outside [A-Za-z0-9.+~]"
    return None


# --- Debian Packages files -------------------------------------------------------------------

# the fields Package models, by their lower-case name (field names are case-insensitive)
_MODELLED_FIELDS = {
    name.lower(): name
    for name in [
        "Package",
        "Version",
        "Architecture",
        "Depends",
        "Pre-Depends",
        "Provides",
        "Conflicts",
        "Breaks",
        "Essential",
        "Priority",
        "Multi-Arch",
        "Filename",
        "SHA256",
        "Size",
    ]
}
_MODELLED_NAMES = frozenset(_MODELLED_FIELDS.values())
_MULTI_ARCH = {"": "", "no": "", "same": "same", "foreign": "foreign", "allowed": "allowed"}
_RELATION_EXPECTED = "name[:arch] [(op version)] with op one of << <= = >= >>"


def read_debian(paths: Sequence[Path], *, arch: str = "amd64") -> Repository:
    """The packages of several Packages files (main, updates, security...), merged, that are
    installable on ``arch``: those of Architecture ``arch`` or ``all``."""
    packages = _read_debian_packages(paths, arch)
    with _collector_paused():
        return Repository(packages, arch=arch)


def _read_debian_packages(paths: Sequence[Path], arch: str) -> list[Package]:
    relations = _RelationCache()
    with _collector_paused():
        return [
            package for path in paths for package in _DebianIndex(path, arch, relations).packages()
        ]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pauses Python's cycle collector while a large package list is built: it would otherwise
    walk the growing heap of new objects again and again (twice the time), for nothing: a
    package list holds no reference cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # What was built lives as long as the process: move it out of the collector's
        # generations, or the next collection walks all of it (0.2 s on the Debian corpus).
        gc.freeze()
        if was_enabled:
            gc.enable()


@dataclass
class _Stanza:
    """One deb822 stanza: its fields (modelled ones under their canonical spelling) and the
    line of each, for error messages."""

    origin: str
    line: int
    fields: dict[str, str] = field(default_factory=dict)
    field_lines: dict[str, int] = field(default_factory=dict)
    name: str = "?"
    last_field: str = ""

    def error(self, problem: str, expected: str, at: str | int | None = None) -> IndexFormatError:
        """An error at a field (by name), a line (by number), or else the stanza's first line."""
        line = at if isinstance(at, int) else self.field_lines.get(at or "", self.line)
        return IndexFormatError(self.origin, line, self.name, problem, expected)

    def add_line(self, number: int, line: str) -> None:
        """Adds one line: `Field: value`, or a continuation of the last field's value."""
        if line[0] in " \t" and self.last_field:
            self.fields[self.last_field] += "\n" + line
            return
        key, colon, value = line.partition(":")
        key = key.rstrip()
        if not colon or not key or " " in key or "\t" in key:
            raise self.error(f"line {clip(line)} is not a field", "Field: value", number)
        key = _MODELLED_FIELDS.get(key.lower(), key)
        if key in self.fields:
            problem = f"a second {clip(key, quote=False)} field"
            raise self.error(problem, "each field once in a stanza", number)
        self.fields[key] = value.strip()
        self.field_lines[key] = number
        self.last_field = key
        if key == "Package":
            self.name = self.fields[key]  # for messages about the lines that follow


def _decode(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise IndexFormatError(
            origin, line, "?", "a byte that is not UTF-8", "UTF-8 text"
        ) from error


def _stanzas(text: str, origin: str) -> Iterator[_Stanza]:
    """The stanzas of a deb822 file: blank lines separate them, `#` lines are comments."""
    stanza: _Stanza | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if stanza is not None:
                yield stanza
            stanza = None
        elif not line.startswith("#"):
            stanza = stanza or _Stanza(origin, number)
            stanza.add_line(number, line)
    if stanza is not None:
        yield stanza


class _RelationCache:
    """Relations by their text: the same field values recur thousands of times (`libc6 (>=
    2.34)`); sharing the Relation objects also keeps the pickle small and quick to load."""

    def __init__(self) -> None:
        self.fields: dict[str, tuple[Alternatives, ...]] = {}
        self.relations: dict[tuple[str, str | None, tuple[str, str] | None], Relation] = {}


class _DebianIndex:
    """One Packages file: its stanzas, validated, as Packages of ``arch`` or ``all``."""

    def __init__(self, path: Path, arch: str, relations: _RelationCache) -> None:
        self.path = path
        self.origin = str(path)
        self.arch = arch
        self.cache = relations

    def packages(self) -> Iterator[Package]:
        for stanza in _stanzas(_decode(read_bytes(self.path), self.origin), self.origin):
            package = self._package(stanza)
            if package is not None:
                yield package

    def _package(self, stanza: _Stanza) -> Package | None:
        fields = stanza.fields
        stanza.name = self._name(stanza)
        version = self._version(stanza)
        architecture = fields.get("Architecture", "")
        if not architecture:
            raise stanza.error("no Architecture field", "Architecture: all or an architecture")
        if architecture not in (self.arch, "all"):
            return None
        return Package(
            name=stanza.name,
            version=version,
            arch=architecture,
            depends=self._relation_field(stanza, "Depends"),
            pre_depends=self._relation_field(stanza, "Pre-Depends"),
            provides=self._provides(stanza),
            conflicts=self._plain_relations(stanza, "Conflicts"),
            breaks=self._plain_relations(stanza, "Breaks"),
            essential=self._essential(stanza),
            priority=fields.get("Priority", ""),
            multi_arch=self._multi_arch(stanza),
            filename=fields.get("Filename", ""),
            sha256=fields.get("SHA256", ""),
            size=self._size(stanza),
            origin=self.origin,
            line=stanza.line,
            extra={key: value for key, value in fields.items() if key not in _MODELLED_NAMES},
        )

    @staticmethod
    def _name(stanza: _Stanza) -> str:
        name = stanza.fields.get("Package", "")
        if not name:
            raise stanza.error("no Package field", "Package and Version in every stanza")
        if not _PACKAGE_NAME.fullmatch(name):
            stanza.name = clip(name)
            raise stanza.error("invalid package name", "[a-z0-9][a-z0-9+.-]+", "Package")
        return name

    @staticmethod
    def _version(stanza: _Stanza) -> str:
        if "Version" not in stanza.fields:
            raise stanza.error("no Version field", "Package and Version in every stanza")
        version = stanza.fields["Version"]
        problem = version_problem(version)
        if problem:
            raise stanza.error(problem, VERSION_EXPECTED, "Version")
        return version

    @staticmethod
    def _essential(stanza: _Stanza) -> bool:
        value = stanza.fields.get("Essential", "no")
        if value not in ("yes", "no"):
            raise stanza.error(f"Essential is {clip(value)}", "Essential: yes or no", "Essential")
        return value == "yes"

    @staticmethod
    def _multi_arch(stanza: _Stanza) -> str:
        value = stanza.fields.get("Multi-Arch", "")
        if value not in _MULTI_ARCH:
            expected = "Multi-Arch: no, same, foreign or allowed"
            raise stanza.error(f"Multi-Arch is {clip(value)}", expected, "Multi-Arch")
        return _MULTI_ARCH[value]

    @staticmethod
    def _size(stanza: _Stanza) -> int:
        value = stanza.fields.get("Size", "0")
        if not value.isdigit():
            raise stanza.error(f"Size is {clip(value)}", "a size in bytes", "Size")
        return int(value)

    def _plain_relations(self, stanza: _Stanza, field_name: str) -> tuple[Relation, ...]:
        groups = self._relation_field(stanza, field_name)
        if any(len(group) > 1 for group in groups):
            problem = f"{field_name} has alternatives (a | b)"
            raise stanza.error(problem, "a comma-separated list", field_name)
        return tuple(relation for (relation,) in groups)

    def _provides(self, stanza: _Stanza) -> tuple[Relation, ...]:
        provides = self._plain_relations(stanza, "Provides")
        for relation in provides:
            if relation.op not in (None, "="):
                problem = f"Provides {relation} is not an exact version"
                raise stanza.error(problem, "name or name (= version)", "Provides")
        return provides

    def _relation_field(self, stanza: _Stanza, field_name: str) -> tuple[Alternatives, ...]:
        text = stanza.fields.get(field_name, "")
        if not text:
            return ()
        parsed = self.cache.fields.get(text)
        if parsed is None:
            parsed = self.cache.fields[text] = tuple(
                tuple(self._relation(stanza, field_name, raw) for raw in group)
                for group in PkgRelation.parse_relations(text)
            )
        return parsed

    def _relation(
        self, stanza: _Stanza, field_name: str, raw: PkgRelation.ParsedRelation
    ) -> Relation:
        key = (raw["name"], raw["archqual"], raw["version"])
        relation = self.cache.relations.get(key)
        if relation is None or raw["arch"] is not None or raw["restrictions"] is not None:
            relation = self.cache.relations[key] = self._new_relation(stanza, field_name, raw)
        return relation

    @staticmethod
    def _new_relation(
        stanza: _Stanza, field_name: str, raw: PkgRelation.ParsedRelation
    ) -> Relation:
        def fail(problem: str) -> IndexFormatError:
            return stanza.error(f"{field_name}: {problem}", _RELATION_EXPECTED, field_name)

        name = clip(raw["name"], quote=False)

        # what python-debian cannot parse, it returns whole as the name (and logs a warning)
        if not _RELATION_NAME.fullmatch(raw["name"]):
            raise fail(f"cannot parse relation {clip(raw['name'].strip())}")
        if raw["arch"] is not None or raw["restrictions"] is not None:
            raise fail(f"{name}: [arch] lists and <profiles> belong in source packages")
        op = version = None
        if raw["version"] is not None:
            written, version = raw["version"]
            op = _OPERATORS.get(written)
            if op is None:
                raise fail(f"{name}: unknown operator {clip(written)}")
            problem = version_problem(version)
            if problem:
                raise fail(f"{name}: {problem}")
        return Relation(raw["name"], op, version, raw["archqual"])


# --- writing Packages files --------------------------------------------------------------------


def write_packages(packages: Iterable[Package], path: Path) -> None:
    """A Debian Packages file of ``packages`` (compressed if ``path`` ends in .gz or .xz),
    relations rendered back exactly: alternatives, versions, `:arch` qualifiers."""
    with open_for_writing(path) as stream:
        for number, package in enumerate(packages):
            if number:
                stream.write("\n")
            stream.writelines(
                f"{name}: {value}\n" for name, value in stanza_fields(package).items()
            )


def stanza_fields(package: Package) -> dict[str, str]:
    """The deb822 fields of ``package``: the modelled ones that are set, in the usual order of
    an archive's Packages file, with the other fields it was read with in the middle."""
    first = {
        "Package": package.name,
        "Version": package.version,
        "Architecture": package.arch,
        "Multi-Arch": package.multi_arch,
        "Essential": "yes" if package.essential else "",
        "Priority": package.priority,
        "Pre-Depends": format_requirements(package.pre_depends),
        "Depends": format_requirements(package.depends),
        "Provides": format_relations(package.provides),
        "Conflicts": format_relations(package.conflicts),
        "Breaks": format_relations(package.breaks),
    }
    last = {
        "Filename": package.filename,
        "Size": str(package.size) if package.size else "",
        "SHA256": package.sha256,
    }
    return {
        **{name: value for name, value in first.items() if value},
        **package.extra,
        **{name: value for name, value in last.items() if value},
    }


def format_relations(relations: Iterable[Relation]) -> str:
    return ", ".join(str(relation) for relation in relations)


def format_requirements(groups: Iterable[Alternatives]) -> str:
    return ", ".join(" | ".join(str(relation) for relation in group) for group in groups)


# --- the cache -------------------------------------------------------------------------------

_PICKLE = "packages.pickle"


PINNED_CORPUS_FILES = (
    "debian-12.15-main-amd64.Packages.xz",
    "debian-12-updates-20261123-main-amd64.Packages.xz",
    "debian-12-security-20261122-main-amd64.Packages.xz",
)


def pinned_corpus() -> list[Path]:
    """The pinned Debian 12 indexes (main, updates, security) for tests and benchmarks, read in
    place: ``$UCVM_SOLVER_CORPUS``, else ``../shared/data/solver`` beside the checkout."""
    checkout = Path(__file__).resolve().parents[2]
    folder = Path(os.environ.get("UCVM_SOLVER_CORPUS", checkout.parent / "shared/data/solver"))
    paths = [folder / name for name in PINNED_CORPUS_FILES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"the pinned solver corpus is missing: {', '.join(missing)}; the checkout needs "
            "../shared beside it (as CI has), or set UCVM_SOLVER_CORPUS to its folder"
        )
    return paths


def load_cached(
    paths: Sequence[Path], store: ArtifactStore | None = None, *, arch: str = "amd64"
) -> Repository:
    """``read_debian(paths, arch=arch)``, parsed once: the package list is pickled in the
    artifact store under the digests (and names: Package.origin holds them) of the files."""
    for path in paths:
        check_index_file(path)  # before hashing it: a missing file or a directory, named
    store = store or ArtifactStore()
    inputs = {
        "reader": READER_VERSION,
        "arch": arch,
        "indexes": [[str(path), file_digest(path)] for path in paths],
    }

    def build(directory: Path) -> None:
        packages = _read_debian_packages(paths, arch)
        with _collector_paused(), (directory / _PICKLE).open("wb") as stream:
            pickle.dump(packages, stream, pickle.HIGHEST_PROTOCOL)

    directory = store.get("debian-index", inputs, build)
    with _collector_paused(), (directory / _PICKLE).open("rb") as stream:
        return Repository(pickle.load(stream), arch=arch)


__all__ = [
    "PINNED_CORPUS_FILES",
    "READER_VERSION",
    "VERSION_EXPECTED",
    "format_relations",
    "format_requirements",
    "load_cached",
    "pinned_corpus",
    "read_debian",
    "stanza_fields",
    "version_problem",
    "write_packages",
]
