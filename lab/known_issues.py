"""known-issues.yaml: footnotes for the support table and the gate's waivers, validated with
file:line:column errors.

An entry's scope is its platform and, when given, its target, check, channel, version and kind
of evidence; ``expires:`` (YYYY-MM-DD) ends it: from that day on it applies to nothing (the
table shows no ⚡ for it and the gate waives nothing with it), and the report says it expired.

The file is configuration the user writes, named by matrix.yaml's ``gate.known_issues``: it is
read and checked when the matrix loads (lab/targets/registry.py), so that a mistake in it stops
a run before anything boots, and read again by the report and the gate. It loads through the
lab's one YAML loader (lab/config.py): every problem at once, each as
``FILE:LINE:COLUMN: [N] (platform 'P').key: what is wrong; what to do``. Its platforms and
kinds of evidence are those of lab/evidence.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from lab import config
from lab.evidence import EVIDENCE, PLATFORMS

KEYS = (
    "platform", "kind", "target", "check", "channel", "version", "evidence", "summary", "link",
    "expires",
)  # fmt: skip


class KnownIssuesError(config.ConfigError):
    """known-issues.yaml is malformed; each line names file:line:column, key and expectation."""


@dataclass(frozen=True)
class KnownIssue:
    """One entry: ``issue`` turns a passing cell into ⚡, ``note`` is a footnote only."""

    platform: str
    summary: str
    kind: str = "issue"
    target: str | None = None
    check: str | None = None
    channel: str | None = None
    version: str | None = None
    evidence: str | None = None
    link: str | None = None
    expires: date | None = None

    @property
    def is_issue(self) -> bool:
        return self.kind == "issue"

    def expired(self, today: date | None = None) -> bool:
        """True from its ``expires`` day on (never without one)."""
        return self.expires is not None and (today or date.today()) >= self.expires

    def applies_to(
        self,
        platform: str,
        version: str,
        evidence: str,
        *,
        target: str | None = None,
        check: str | None = None,
        channel: str | None = None,
        today: date | None = None,
    ) -> bool:
        """True for cells of this platform, and of this target, check, channel, version and
        evidence when the entry names them; an expired entry applies to nothing. A cell that
        does not say its target (or check, channel) is not in a scope that names one."""
        return (
            not self.expired(today)
            and self.platform == platform
            and self.version in (None, version)
            and self.evidence in (None, evidence)
            and self.target in (None, target)
            and self.check in (None, check)
            and self.channel in (None, channel)
        )

    def scope(self) -> str:
        """The entry's scope as text: ``KVM · target kvm · check boot``."""
        named = [
            f"{key} {value}"
            for key, value in (
                ("target", self.target), ("check", self.check), ("channel", self.channel),
                ("version", self.version), ("evidence", self.evidence),
            )
            if value is not None
        ]  # fmt: skip
        return " · ".join([self.platform, *named])


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError(f"expected a non-empty string; found {config.describe(value)}")
    return value


Text = Annotated[str, AfterValidator(_non_empty)]

CHOICES = {"platform": PLATFORMS, "evidence": EVIDENCE}
"""The keys whose values are the evidence vocabulary's, in the table's order."""


class _EntrySchema(config.Schema):
    """One entry of the list; the fields in the order of ``KEYS`` (the allowed keys' order)."""

    platform: str
    kind: Literal["issue", "note"] = "issue"
    target: Text | None = None
    check: Text | None = None
    channel: Text | None = None
    version: Text | None = None
    evidence: str | None = None
    summary: Text
    link: Text | None = None
    expires: date | None = None

    @field_validator("expires", mode="before")
    @classmethod
    def _a_day(cls, value: Any) -> Any:
        """A day as text (the lab's YAML loader keeps timestamps as text: lab/config.py)."""
        if isinstance(value, datetime):
            raise ValueError("expected a day (YYYY-MM-DD), not a time")
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"expected a day YYYY-MM-DD; found {value!r}") from None
        if not isinstance(value, date):
            raise ValueError(f"expected a day YYYY-MM-DD; found {config.describe(value)}")
        return value

    @field_validator(
        "target", "check", "channel", "version", "evidence", "link", "expires", mode="before"
    )
    @classmethod
    def _given_means_a_value(cls, value: Any) -> Any:
        """An optional key that is there must say something: leave it out rather than null."""
        if value is None:
            raise ValueError(
                "expected a non-empty string, or leave the key out; found nothing (null)"
            )
        return value

    @field_validator("platform", "evidence")
    @classmethod
    def _in_the_vocabulary(cls, value: str, info: ValidationInfo) -> str:
        allowed = CHOICES[str(info.field_name)]
        if value not in allowed:
            expected = ", ".join(allowed)
            raise ValueError(f"unknown {info.field_name} {value!r}; expected one of: {expected}")
        return value


EXPECTED_WHEN_MISSING = {
    "platform": f"expected one of: {', '.join(PLATFORMS)}",
    "summary": "expected a non-empty string",
}
"""What a missing required key should hold, added to "required key is missing"."""


def load_known_issues(path: Path, env: Mapping[str, str] | None = None) -> list[KnownIssue]:
    """Read and validate known-issues.yaml: a list of mappings with the keys in ``KEYS``.

    An empty file (or one of comments only) has no known issues. Raises KnownIssuesError with
    every problem of the file, one line each, in file order.
    """
    document = config.read(
        path, error=KnownIssuesError, env=env, item_key="platform", yaml_label="invalid YAML"
    )
    if document.tree is None:
        return []
    if not isinstance(document.tree, list):
        found = config.describe(document.tree)
        raise KnownIssuesError(
            document.message(
                config.Problem(
                    (),
                    f"expected a list of known issues (`- platform: ...`); found {found}",
                    label="",
                )
            )
        )
    issues: list[KnownIssue] = []
    problems: list[config.Problem] = []
    for index, entry in enumerate(document.tree):
        try:
            model = _EntrySchema.model_validate(entry, strict=True)
        except ValidationError as error:
            problems += [_in_entry(index, detail) for detail in _explained(error.errors())]
            continue
        issues.append(KnownIssue(**model.model_dump(exclude_none=True)))
    if problems:
        raise KnownIssuesError(*document.messages(problems))
    return issues


def _explained(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """An entry's errors, without its missing keys when it has an unknown key: a mistyped key
    (``sumary:``) is the likeliest reason a key is missing, so the typo is reported alone."""
    if not any(error["type"] == "extra_forbidden" for error in errors):
        return errors
    return [error for error in errors if error["type"] != "missing"]


def _in_entry(index: int, error: ErrorDetails) -> config.Problem:
    """A pydantic error of entry ``index`` (validated on its own), located in the whole file,
    with what a missing key should hold, or which keys a mapping takes."""
    problem = config.problem_from(error, _EntrySchema)
    message = problem.message
    key = str(problem.loc[0]) if problem.loc else ""
    if error["type"] == "missing" and key in EXPECTED_WHEN_MISSING:
        message += f"; {EXPECTED_WHEN_MISSING[key]}"
    elif error["type"] == "model_type" and not problem.loc:
        message = message.replace("a mapping", f"a mapping with the keys {', '.join(KEYS)}", 1)
    return config.Problem((index, *problem.loc), message, problem.at_key, problem.label)
