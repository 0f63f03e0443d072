"""known-issues.yaml: footnotes for the support table, validated with file:line:column errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from lab.report.table import EVIDENCE, PLATFORMS

KINDS = ("issue", "note")
KEYS = ("platform", "kind", "version", "evidence", "summary", "link")


class KnownIssuesError(ValueError):
    """known-issues.yaml is malformed; the message names file:line:column, key and expectation."""


@dataclass(frozen=True)
class KnownIssue:
    """One entry: ``issue`` turns a passing cell into ⚡, ``note`` is a footnote only."""

    platform: str
    summary: str
    kind: str = "issue"
    version: str | None = None
    evidence: str | None = None
    link: str | None = None

    @property
    def is_issue(self) -> bool:
        return self.kind == "issue"

    def applies_to(self, platform: str, version: str, evidence: str) -> bool:
        """True for cells of this platform, and of this version and evidence when given."""
        return (
            self.platform == platform
            and self.version in (None, version)
            and self.evidence in (None, evidence)
        )


def load_known_issues(path: Path) -> list[KnownIssue]:
    """Read and validate known-issues.yaml: a list of mappings with the keys in ``KEYS``."""
    data = _load_yaml(path)
    if data is None:
        return []
    if not isinstance(data, CommentedSeq):
        raise KnownIssuesError(
            f"{path}:1:1: expected a list of known issues (`- platform: ...`), "
            f"got a {_type_name(data)}"
        )
    return [_parse_entry(_Source(path), data, index) for index in range(len(data))]


def _load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise KnownIssuesError(f"{path}: cannot read: {error.strerror}") from error
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise KnownIssuesError(f"{where}: invalid YAML: {error.problem or error}") from error
    except YAMLError as error:
        raise KnownIssuesError(f"{path}: invalid YAML: {error}") from error


@dataclass(frozen=True)
class _Source:
    path: Path

    def at(self, position: tuple[int, int]) -> str:
        line, column = position
        return f"{self.path}:{line + 1}:{column + 1}"


def _parse_entry(source: _Source, entries: CommentedSeq, index: int) -> KnownIssue:
    entry = entries[index]
    where = source.at(entries.lc.item(index))
    if not isinstance(entry, CommentedMap):
        raise KnownIssuesError(
            f"{where}: entry {index + 1}: expected a mapping with keys {', '.join(KEYS)}, "
            f"got a {_type_name(entry)}"
        )
    for key in entry:
        if key not in KEYS:
            raise KnownIssuesError(
                f"{source.at(entry.lc.key(key))}: {key!r}: unknown key; "
                f"expected one of: {', '.join(KEYS)}"
            )
    fields = _Fields(source, entry, where)
    return KnownIssue(
        platform=fields.choice("platform", PLATFORMS, required=True) or "",
        summary=fields.text("summary", required=True) or "",
        kind=fields.choice("kind", KINDS) or "issue",
        version=fields.text("version"),
        evidence=fields.choice("evidence", EVIDENCE),
        link=fields.text("link"),
    )


@dataclass(frozen=True)
class _Fields:
    """Typed access to one entry's values, raising errors that point at the value."""

    source: _Source
    entry: CommentedMap
    where: str

    def text(
        self, key: str, *, required: bool = False, expected: str = "a non-empty string"
    ) -> str | None:
        if key not in self.entry:
            if required:
                raise KnownIssuesError(f"{self.where}: {key!r}: missing; expected {expected}")
            return None
        value = self.entry[key]
        if not isinstance(value, str) or not value.strip():
            raise KnownIssuesError(
                f"{self.source.at(self.entry.lc.value(key))}: {key!r}: expected a non-empty "
                f"string (quote it), got {_type_name(value)} {value!r}"
            )
        return str(value)

    def choice(self, key: str, allowed: tuple[str, ...], *, required: bool = False) -> str | None:
        expected = f"one of: {', '.join(allowed)}"
        value = self.text(key, required=required, expected=expected)
        if value is not None and value not in allowed:
            raise KnownIssuesError(
                f"{self.source.at(self.entry.lc.value(key))}: {key!r}: unknown value "
                f"{value!r}; expected {expected}"
            )
        return value


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    kinds = (
        (CommentedMap, "mapping"),
        (CommentedSeq, "list"),
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
    )
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)
