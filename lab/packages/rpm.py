"""RPM repositories into a Repository: `primary.xml` read with expat, and rpm's own version
order (`rpm_compare`, `rpmvercmp`).

Only the tests use this reader today (the appliance is Debian): it shows that the model and the
solver are not Debian-specific. rpm's rules differ from dpkg's where it matters to the solver:
an unversioned Provides satisfies any versioned requirement, releases are compared only when
both sides have one, and Requires(pre) are pre-dependencies. Errors are the shared
IndexFileError and IndexFormatError (lab/packages/index.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from lab.messages import clip
from lab.packages.index import IndexFormatError, read_bytes
from lab.packages.model import Alternatives, Package, Relation, Repository

# --- rpmvercmp --------------------------------------------------------------------------------

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


# --- primary.xml ------------------------------------------------------------------------------

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
        for stanza in _PrimaryParser(str(path)).parse(read_bytes(path))
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


__all__ = ["read_rpm_primary", "rpm_compare", "rpmvercmp"]
