"""Repository index readers: Debian `Packages` files and RPM `primary.xml` into a Repository.

Debian indexes are split into stanzas here (for line numbers, and three times faster than
python-debian's deb822 reader), their relations parsed by python-debian's relation parser
(which keeps `<<`/`>>` and `:arch` qualifiers), and validated as dpkg would: a stanza the
reader cannot model exactly raises IndexFormatError naming the file, the line and the package,
rather than being guessed at. RPM repositories are read from their `primary.xml` with expat
and compared with rpm's own version rules (`rpm_compare`).

`load_cached` parses a set of Debian indexes once and keeps the package list, pickled, in the
artifact store under the digest of the index files; `write_packages` writes packages back as a
Packages file that dpkg tools and dose-distcheck read.
"""

from __future__ import annotations

import gc
import gzip
import lzma
import os
import pickle
import re
import subprocess
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from xml.parsers import expat

from debian.deb822 import PkgRelation

from lab.artifacts import ArtifactStore, file_digest
from lab.build.packages import Alternatives, Package, Relation, Repository
from lab.messages import clip

READER_VERSION = "1"  # part of the cache key: bump when parsing changes what a Package holds


class IndexFormatError(ValueError):
    """An index stanza that cannot be read: "FILE:LINE: package NAME: problem; expected ..."."""

    def __init__(self, origin: str, line: int, package: str, problem: str, expected: str) -> None:
        shown = clip(package, quote=False)
        super().__init__(f"{origin}:{line}: package {shown}: {problem}; expected {expected}")
        self.origin = origin
        self.line = line
        self.package = package


class IndexFileError(IndexFormatError):
    """An index file that cannot be read at all: "FILE: problem; what to do"."""

    def __init__(self, path: Path, problem: str) -> None:
        ValueError.__init__(self, f"{path}: {problem}")
        self.origin, self.line, self.package = str(path), 0, "?"


# --- reading compressed files ------------------------------------------------------------------

_COMPRESSION = {".gz": "gzip", ".xz": "xz", ".zst": "zstd"}
_KINDS = "a Packages index (plain, or .gz, .xz, .zst compressed as its name says)"


def check_index_file(path: Path) -> None:
    """IndexFileError unless ``path`` is a file that can be opened."""
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise IndexFileError(path, f"cannot read it ({error.strerror}); give {_KINDS}") from error


def _read_bytes(path: Path) -> bytes:
    """The content of ``path``, decompressed according to its suffix (.gz, .xz, .zst)."""
    check_index_file(path)
    try:
        return _decompressed(path)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
        kind = _COMPRESSION.get(path.suffix, "plain")
        raise IndexFileError(
            path, f"not a valid {kind} file ({clip(str(error), quote=False)}); give {_KINDS}"
        ) from error
    except subprocess.CalledProcessError as error:
        said = clip(error.stderr.decode(errors="replace").strip(), quote=False)
        raise IndexFileError(path, f"zstd cannot decompress it ({said}); give {_KINDS}") from error


def _decompressed(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path) as stream:
            return stream.read()
    if path.suffix == ".xz":
        with lzma.open(path) as stream:
            return stream.read()
    if path.suffix == ".zst":  # no zstd module in the standard library before Python 3.14
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return path.read_bytes()


def _open_for_writing(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8")
    if path.suffix == ".xz":
        return lzma.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")


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
        for stanza in _stanzas(_decode(_read_bytes(self.path), self.origin), self.origin):
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
    with _open_for_writing(path) as stream:
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


# --- RPM: rpmvercmp --------------------------------------------------------------------------

_DIGITS = frozenset("0123456789")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALNUM = _DIGITS | _LETTERS


def rpm_compare(left: str, right: str) -> int:
    """rpm's order of "[EPOCH:]VERSION[-RELEASE]" strings: -1, 0 or 1.

    A missing epoch is 0. As in rpm's dependency matching, the releases are compared only when
    both strings have one, so `1.0` equals both `1.0-1` and `1.0-2` (a requirement on `>= 1.0`
    accepts every release of 1.0).
    """
    left_epoch, left_version, left_release = _split_evr(left)
    right_epoch, right_version, right_release = _split_evr(right)
    if left_epoch != right_epoch:
        return -1 if left_epoch < right_epoch else 1
    order = rpmvercmp(left_version, right_version)
    if order or left_release is None or right_release is None:
        return order
    return rpmvercmp(left_release, right_release)


def _split_evr(evr: str) -> tuple[int, str, str | None]:
    epoch, colon, rest = evr.partition(":")
    if not colon or not (epoch.isascii() and epoch.isdigit()):
        epoch, rest = "0", evr
    version, hyphen, release = rest.rpartition("-")
    if not hyphen:
        return int(epoch), rest, None
    return int(epoch), version, release


def rpmvercmp(left: str, right: str) -> int:
    """rpm's comparison of two version (or release) strings: -1, 0 or 1.

    Both are cut into runs of ASCII digits and runs of ASCII letters; anything else separates
    runs. Runs compare pairwise: numbers as numbers, letters as strings, a number beats letters.
    `~` sorts before everything, even the end of the string (1.0~rc1 < 1.0); `^` sorts after the
    end of the string but before anything else (1.0 < 1.0^git1 < 1.0.1). When all pairs are
    equal, the string with runs left over is newer.
    """
    if left == right:
        return 0
    i = j = 0
    while i < len(left) or j < len(right):
        i, j = _skip_separators(left, i), _skip_separators(right, j)
        a, b = left[i : i + 1], right[j : j + 1]
        if "~" in (a, b) or "^" in (a, b):
            order = _compare_marks(a, b)
            if order:
                return order
            i, j = i + 1, j + 1
            continue
        if not (a and b):
            break
        order, i, j = _compare_runs(left, i, right, j)
        if order:
            return order
    return _compare_leftovers(left[i:], right[j:])


def _skip_separators(text: str, position: int) -> int:
    while position < len(text) and text[position] not in _ALNUM and text[position] not in "~^":
        position += 1
    return position


def _compare_marks(a: str, b: str) -> int:
    """One of ``a`` and ``b`` (the next characters, "" at the end) is `~` or `^`."""
    if a == "~" or b == "~":
        return 0 if a == b else (1 if b == "~" else -1)
    if not a:
        return -1  # `^` after the end: 1.0 < 1.0^git
    if not b:
        return 1
    return 0 if a == b else (1 if b == "^" else -1)


def _compare_runs(left: str, i: int, right: str, j: int) -> tuple[int, int, int]:
    """Compares the run at ``left[i]`` with the run of the same kind at ``right[j]``."""
    kind = _DIGITS if left[i] in _DIGITS else _LETTERS
    left_end, right_end = _run_end(left, i, kind), _run_end(right, j, kind)
    if right_end == j:  # the other string has a run of the other kind here
        return (1 if kind is _DIGITS else -1), left_end, right_end
    a, b = left[i:left_end], right[j:right_end]
    if kind is _DIGITS:
        a, b = a.lstrip("0"), b.lstrip("0")
        if len(a) != len(b):
            return (1 if len(a) > len(b) else -1), left_end, right_end
    return (a > b) - (a < b), left_end, right_end


def _run_end(text: str, position: int, kind: frozenset[str]) -> int:
    while position < len(text) and text[position] in kind:
        position += 1
    return position


def _compare_leftovers(left: str, right: str) -> int:
    if not left and not right:
        return 0
    return -1 if not left else 1


# --- RPM: primary.xml ------------------------------------------------------------------------

_COMMON = "http://linux.duke.edu/metadata/common"
_RPM = "http://linux.duke.edu/metadata/rpm"
_RPM_FLAGS = {"EQ": "=", "LT": "<<", "LE": "<=", "GT": ">>", "GE": ">="}
_RICH_OPERATORS = {"=": "=", "<": "<<", "<=": "<=", ">": ">>", ">=": ">="}
_RICH_ATOM = re.compile(r"\s*([^\s()]+)(?:\s+(<=|>=|<|>|=)\s+([^\s()]+))?\s*")
_DEPENDENCY_KINDS = ("provides", "requires", "conflicts")  # obsoletes and weak ones: ignored


@dataclass
class _RpmEntry:
    """An `<rpm:entry>`: one Provides, Requires or Conflicts of a package."""

    name: str
    flags: str | None
    evr: str | None
    pre: bool
    line: int


@dataclass
class _RpmStanza:
    """One `<package>` of primary.xml as read, before it becomes a Package."""

    line: int
    name: str = ""
    arch: str = ""
    evr: str = ""
    sha256: str = ""
    size: int = 0
    filename: str = ""
    sourcerpm: str = ""
    files: list[str] = field(default_factory=list)
    entries: dict[str, list[_RpmEntry]] = field(
        default_factory=lambda: {kind: [] for kind in _DEPENDENCY_KINDS}
    )


def _evr(epoch: str | None, version: str | None, release: str | None) -> str | None:
    """rpm's "EPOCH:VERSION-RELEASE", without a "0:" epoch; None without a version."""
    if not version:
        return None
    prefix = f"{epoch}:" if epoch and epoch != "0" else ""
    suffix = f"-{release}" if release else ""
    return f"{prefix}{version}{suffix}"


class _PrimaryParser:
    """Expat handlers that collect the `<package>` elements of a primary.xml."""

    _TEXT = frozenset({"name", "arch", "checksum", "file"})  # elements whose text counts

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.parser = expat.ParserCreate(namespace_separator=" ")
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._text
        self.stanzas: list[_RpmStanza] = []
        self.current: _RpmStanza | None = None
        self.section = ""  # provides, requires... while inside one
        self.text: list[str] | None = None
        self.checksum_type = ""

    def parse(self, data: bytes) -> list[_RpmStanza]:
        try:
            self.parser.Parse(data, True)
        except expat.ExpatError as error:
            name = self.current.name if self.current else "?"
            raise IndexFormatError(
                self.origin,
                error.lineno,
                name,
                f"broken XML ({expat.errors.messages[error.code]})",
                "a createrepo primary.xml",
            ) from error
        return self.stanzas

    def _start(self, tag: str, attributes: dict[str, str]) -> None:
        namespace, _, name = tag.rpartition(" ")
        if namespace == _COMMON and name == "package":
            self.current = _RpmStanza(line=self.parser.CurrentLineNumber)
        elif self.current is None:
            return
        elif namespace == _COMMON:
            self._common_start(name, attributes)
        elif namespace == _RPM:
            self._rpm_start(name, attributes)

    def _common_start(self, name: str, attributes: dict[str, str]) -> None:
        assert self.current is not None
        if name in self._TEXT:
            self.text = []
            self.checksum_type = attributes.get("type", "")
        elif name == "version":
            self.current.evr = (
                _evr(attributes.get("epoch"), attributes.get("ver"), attributes.get("rel")) or ""
            )
        elif name == "size":
            self.current.size = self._size(attributes.get("package", "0"))
        elif name == "location":
            self.current.filename = attributes.get("href", "")

    def _size(self, text: str) -> int:
        if not text.isdigit():
            name = self.current.name if self.current else "?"
            line = self.parser.CurrentLineNumber
            raise IndexFormatError(self.origin, line, name, f"size {clip(text)}", "a size in bytes")
        return int(text)

    def _rpm_start(self, name: str, attributes: dict[str, str]) -> None:
        assert self.current is not None
        if name == "sourcerpm":
            self.text = []
        elif name == "entry" and self.section in _DEPENDENCY_KINDS:
            self.current.entries[self.section].append(
                _RpmEntry(
                    name=attributes.get("name", ""),
                    flags=attributes.get("flags"),
                    evr=_evr(attributes.get("epoch"), attributes.get("ver"), attributes.get("rel")),
                    pre=attributes.get("pre") == "1",
                    line=self.parser.CurrentLineNumber,
                )
            )
        else:
            self.section = name

    def _text(self, data: str) -> None:
        if self.text is not None:
            self.text.append(data)

    def _end(self, tag: str) -> None:
        _, _, name = tag.rpartition(" ")
        if self.current is None:
            return
        if name == "package":
            self.stanzas.append(self.current)
            self.current = None
        elif self.text is not None:
            self._store_text(name, "".join(self.text).strip())
            self.text = None
        elif name == self.section:
            self.section = ""

    def _store_text(self, name: str, value: str) -> None:
        assert self.current is not None
        if name == "file":
            self.current.files.append(value)
        elif name == "checksum":
            if self.checksum_type == "sha256":
                self.current.sha256 = value
        elif name in ("name", "arch", "sourcerpm"):
            setattr(self.current, name, value)


def read_rpm_primary(path: Path, *, arch: str = "x86_64") -> Repository:
    """The packages of an RPM repository's primary.xml (plain, .gz, .xz or .zst) that are
    installable on ``arch``: those of that architecture or noarch."""
    stanzas = [
        stanza
        for stanza in _PrimaryParser(str(path)).parse(_read_bytes(path))
        if stanza.arch in (arch, "noarch")
    ]
    return Repository(
        _RpmIndex(str(path), stanzas).packages(),
        arch=arch,
        compare=rpm_compare,
        bare_provides_match_versions=True,  # rpm: an unversioned Provides matches any version
    )


class _RpmIndex:
    """Turns parsed stanzas into Packages; file requires need the whole repository."""

    def __init__(self, origin: str, stanzas: list[_RpmStanza]) -> None:
        self.origin = origin
        self.stanzas = stanzas
        required_files = {
            entry.name
            for stanza in stanzas
            for entry in stanza.entries["requires"]
            if entry.name.startswith("/")
        }
        self.provided_files = {
            name
            for stanza in stanzas
            for name in [*stanza.files, *(entry.name for entry in stanza.entries["provides"])]
            if name in required_files
        }

    def packages(self) -> list[Package]:
        return [self._package(stanza) for stanza in self.stanzas]

    def _package(self, stanza: _RpmStanza) -> Package:
        if not stanza.name or not stanza.evr:
            raise IndexFormatError(
                self.origin,
                stanza.line,
                stanza.name or "?",
                "no name or no version",
                "<name> and <version ver=...>",
            )
        requires = [
            (group, entry.pre)
            for entry in stanza.entries["requires"]
            if (group := self._requirement(stanza, entry))
        ]
        return Package(
            name=stanza.name,
            version=stanza.evr,
            arch=stanza.arch,
            depends=tuple(group for group, pre in requires if not pre),
            pre_depends=tuple(group for group, pre in requires if pre),  # Requires(pre)
            provides=self._provides(stanza),
            conflicts=tuple(
                self._relation(stanza, entry)
                for entry in stanza.entries["conflicts"]
                if not entry.name.startswith("(")  # a rich conflict: not modelled
            ),
            filename=stanza.filename,
            sha256=stanza.sha256,
            size=stanza.size,
            origin=self.origin,
            line=stanza.line,
            extra={"Source-RPM": stanza.sourcerpm} if stanza.sourcerpm else {},
        )

    def _provides(self, stanza: _RpmStanza) -> tuple[Relation, ...]:
        # every package provides its own name and version, which Repository already matches:
        # keep that entry out, or the package would satisfy each relation on it twice
        declared = tuple(
            self._relation(stanza, entry)
            for entry in stanza.entries["provides"]
            if (entry.name, entry.flags, entry.evr) != (stanza.name, "EQ", stanza.evr)
        )
        # a file a package holds is something it provides; only the files someone requires
        # are worth an entry (and primary.xml lists few files anyway)
        held = tuple(Relation(name) for name in stanza.files if name in self.provided_files)
        return declared + held

    def _requirement(self, stanza: _RpmStanza, entry: _RpmEntry) -> Alternatives:
        """The alternatives that satisfy a Requires; () for one this reader skips."""
        if entry.name.startswith("rpmlib("):
            return ()  # features of rpm itself (CompressedFileNames...), not packages
        if entry.name.startswith("/") and entry.name not in self.provided_files:
            # primary.xml lists only the files createrepo deems commonly required (*/bin/*,
            # /etc/*, /usr/lib/sendmail); the others are in filelists.xml, which this reader
            # does not read. Such a file require is not known unsatisfiable, only unknown:
            # dropping the package for it would be wrong, so the require is skipped.
            return ()
        if entry.name.startswith("("):
            return _rich_alternatives(entry.name)
        return (self._relation(stanza, entry),)

    def _relation(self, stanza: _RpmStanza, entry: _RpmEntry) -> Relation:
        if entry.flags is None:
            return Relation(entry.name)
        op = _RPM_FLAGS.get(entry.flags)
        if op is None or entry.evr is None:
            raise IndexFormatError(
                self.origin,
                entry.line,
                stanza.name,
                f"entry {clip(entry.name)} has flags {clip(entry.flags)} and version "
                f"{clip(entry.evr or '')}",
                "flags EQ, LT, LE, GT or GE with a ver attribute",
            )
        return Relation(entry.name, op, entry.evr)


def _rich_alternatives(text: str) -> Alternatives:
    """A boolean dependency `(a or b >= 2 or c)` as alternatives. Other rich dependencies
    (and, if, with, unless, nesting) are skipped: a single list of alternatives cannot say
    them, and rpm decides them with knowledge of the installed set."""
    inner = text[1:-1] if text.endswith(")") else ""
    relations = []
    for atom in re.split(r"\s+or\s+", inner):
        match = _RICH_ATOM.fullmatch(atom)  # a name, maybe with `op version`; no parentheses
        if match is None:
            return ()
        name, op, version = match.groups()
        relations.append(Relation(name, _RICH_OPERATORS[op], version) if op else Relation(name))
    return tuple(relations)


__all__ = [
    "IndexFileError",
    "IndexFormatError",
    "format_relations",
    "format_requirements",
    "load_cached",
    "read_debian",
    "read_rpm_primary",
    "rpm_compare",
    "rpmvercmp",
    "stanza_fields",
    "version_problem",
    "write_packages",
]
