"""known-issues.yaml: footnotes for the support table, validated with file:line:column errors.

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
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from lab import config
from lab.evidence import EVIDENCE, PLATFORMS

KEYS = ("platform", "kind", "version", "evidence", "summary", "link")


class KnownIssuesError(config.ConfigError):
    """known-issues.yaml is malformed; each line names file:line:column, key and expectation."""


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
    version: Text | None = None
    evidence: str | None = None
    summary: Text
    link: Text | None = None

    @field_validator("version", "evidence", "link", mode="before")
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
