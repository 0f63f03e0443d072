"""The support-status table's model: platforms x (OS version, kind of evidence), from results.

A cell is ✓ only with evidence: a passed result, its date and its console log. A cell where
nothing ran is ``?``, with a footnote saying why. Profile runs (here, on emulated hardware of
the platform) and real runs (on the platform itself) are separate columns. The ``boot`` table
ends with a contextualization column: one entry per channel of the platform's ``context``
results (profile runs; real-platform ones are footnotes), ◐ when only some steps took effect,
and a rebase column: one entry per rebase cell (target, FROM → TO) of the platform, planned in
matrix.yaml or reported, ✓ only when every one of them passed, a footnote per failed rule.

This module decides what each cell says; lab/report/render.py writes it as Markdown and HTML.
The results come from lab/evidence.py's reader, the footnotes also from known-issues.yaml.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lab.evidence import (
    BOOT_CHECK,
    CONTEXT_CHECK,
    EVIDENCE,
    PLATFORMS,
    REBASE_CHECK,
    Result,
    latest_results,
)
from lab.known_issues import KnownIssue

PASS, FAIL, KNOWN_ISSUE, UNKNOWN, PARTIAL = "✓", "✗", "⚡", "?", "◐"
LEGEND = (
    (PASS, "passed: every target of the cell that ran passed"),
    (FAIL, "failed or broken: the target and the phase it failed in are shown"),
    (KNOWN_ISSUE, "passed, with a known issue (see its footnote)"),
    (UNKNOWN, "no evidence: skipped or not run (see its footnote); never counted as a pass"),
)
CONTEXT_TITLE = "contextualization"
CONTEXT_LEGEND = (PARTIAL, "partly: some steps took effect, see the footnote")
NO_CONTEXT_RESULT = "no context result (not run)"
NO_TARGET = "no target in matrix.yaml"
REBASE_TITLE = "rebase"
NO_REBASE_CELL = "no rebase cell in matrix.yaml"
NO_REBASE_RESULT = "no rebase result (and the report was not given matrix.yaml's rebase cells)"


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Footnote:
    number: int
    text: str
    link: str | None = None


@dataclass(frozen=True)
class Cell:
    """One (platform, version, evidence) cell: the latest result of each target mapping to it."""

    platform: str
    version: str
    evidence: str
    symbol: str
    results: tuple[Result, ...]
    notes: tuple[int, ...]

    @property
    def date(self) -> datetime | None:
        return max((result.stop for result in self.results if result.ran), default=None)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(result.target for result in self.results)


@dataclass(frozen=True)
class ContextEntry:
    """One channel's newest ``context`` result in a contextualization cell."""

    result: Result
    symbol: str
    label: str
    notes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContextCell:
    """A platform's contextualization: its profile-run entries; real-platform ones as notes."""

    platform: str
    symbol: str
    entries: tuple[ContextEntry, ...]
    notes: tuple[int, ...]

    @property
    def date(self) -> datetime | None:
        return max((e.result.stop for e in self.entries if e.result.ran), default=None)


@dataclass(frozen=True)
class RebaseEntry:
    """One rebase cell (target, FROM → TO): its newest result, or None if planned and unreported."""

    target: str
    pair: str  # "previous → newest"
    result: Result | None
    symbol: str
    label: str
    notes: tuple[int, ...] = ()


@dataclass(frozen=True)
class RebaseCell:
    """A platform's rebase column: its profile-run entries; real-platform ones as notes."""

    platform: str
    symbol: str
    entries: tuple[RebaseEntry, ...]
    notes: tuple[int, ...]

    @property
    def date(self) -> datetime | None:
        ran = (e.result.stop for e in self.entries if e.result is not None and e.result.ran)
        return max(ran, default=None)


@dataclass(frozen=True)
class Row:
    platform: str
    cells: tuple[Cell, ...]
    context: ContextCell | None = None
    rebase: RebaseCell | None = None


@dataclass
class SupportTable:
    check: str
    versions: list[str]
    rows: list[Row]
    footnotes: list[Footnote]
    built_at: datetime
    sources: list[Path] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(version, evidence) for version in self.versions for evidence in EVIDENCE]

    @property
    def has_context(self) -> bool:
        return any(row.context is not None for row in self.rows)

    @property
    def has_rebase(self) -> bool:
        return any(row.rebase is not None for row in self.rows)

    @property
    def legend(self) -> tuple[tuple[str, str], ...]:
        return (*LEGEND, CONTEXT_LEGEND) if self.has_context else LEGEND

    def cell(self, platform: str, version: str, evidence: str) -> Cell:
        row = self.rows[PLATFORMS.index(platform)]
        return row.cells[self.columns.index((version, evidence))]

    def context_cell(self, platform: str) -> ContextCell:
        context = self.rows[PLATFORMS.index(platform)].context
        if context is None:
            raise KeyError(f"the {self.check!r} table has no {CONTEXT_TITLE} column")
        return context

    def rebase_cell(self, platform: str) -> RebaseCell:
        rebase = self.rows[PLATFORMS.index(platform)].rebase
        if rebase is None:
            raise KeyError(f"the {self.check!r} table has no {REBASE_TITLE} column")
        return rebase


def build_table(
    results: Iterable[Result],
    *,
    versions: Sequence[str],
    known_issues: Sequence[KnownIssue],
    check: str = "boot",
    sources: Sequence[Path] = (),
    planned: Iterable[tuple[str, str, str]] | None = None,
    planned_rebase: Iterable[PlannedRebase] | None = None,
    built_at: datetime | None = None,
) -> SupportTable:
    """The table of ``check``: a row per platform, two columns (profile, real) per version.

    The ``boot`` table adds a contextualization column built from the ``context`` results and
    a rebase column from the ``rebase`` results (per pair, whatever the version columns), when
    there are rebase results or ``planned_rebase`` is given (even empty: the column then says
    that matrix.yaml has no rebase cell).
    ``planned``: optional (target, platform, evidence) triples from matrix.yaml; a cell with no
    result then says which planned targets did not report, instead of "no target in matrix.yaml".
    ``planned_rebase``: the (target, platform, evidence, FROM, TO) rebase cells of matrix.yaml;
    each one without a result is a ``?`` entry, and a platform without any says so.
    """
    latest = latest_results(results)
    checks = (check, CONTEXT_CHECK, REBASE_CHECK) if check == BOOT_CHECK else (check,)
    chosen = [result for result in latest if result.check in checks]
    rebase_results = [r for r in chosen if check == BOOT_CHECK and r.check == REBASE_CHECK]
    per_version = [r for r in chosen if check != BOOT_CHECK or r.check != REBASE_CHECK]
    shown = [result for result in per_version if result.version in versions]
    with_rebase = check == BOOT_CHECK and (planned_rebase is not None or bool(rebase_results))
    plan = _plan(planned)
    builder = _CellBuilder(
        results=[result for result in shown if result.check == check],
        known_issues=known_issues,
        planned=plan,
    )
    context = _ContextCellBuilder(
        results=[result for result in shown if result.check == CONTEXT_CHECK],
        planned=plan,
        footnotes=builder.footnotes,  # one numbering, in reading order
    )
    rebase = _RebaseCellBuilder(
        results=rebase_results,
        planned=None if planned_rebase is None else list(planned_rebase),
        footnotes=builder.footnotes,
    )
    columns = [(version, evidence) for version in versions for evidence in EVIDENCE]
    rows = [
        Row(
            platform,
            tuple(builder.cell(platform, v, e) for v, e in columns),
            context.cell(platform) if check == BOOT_CHECK else None,
            rebase.cell(platform) if with_rebase else None,
        )
        for platform in PLATFORMS
    ]
    return SupportTable(
        check=check,
        versions=list(versions),
        rows=rows,
        footnotes=builder.footnotes.as_list(),
        built_at=built_at or datetime.now(tz=UTC),
        sources=list(sources),
        ignored=sorted(
            f"{result.describe()}: version {result.version!r} is not a column of the table"
            for result in per_version
            if result.version not in versions
        ),
    )


class _Footnotes:
    """Numbers footnotes in order of first reference; the same text and link share a number."""

    def __init__(self) -> None:
        self._numbers: dict[tuple[str, str | None], int] = {}

    def ref(self, text: str, link: str | None = None) -> int:
        return self._numbers.setdefault((text, link), len(self._numbers) + 1)

    def as_list(self) -> list[Footnote]:
        return [Footnote(number, text, link) for (text, link), number in self._numbers.items()]


_Plan = dict[tuple[str, str], list[str]]


def _plan(planned: Iterable[tuple[str, str, str]] | None) -> _Plan | None:
    if planned is None:
        return None
    plan: _Plan = {}
    for target, platform, evidence in planned:
        plan.setdefault((platform, evidence), []).append(target)
    return plan


@dataclass
class _CellBuilder:
    results: list[Result]
    known_issues: Sequence[KnownIssue]
    planned: _Plan | None
    footnotes: _Footnotes = field(default_factory=_Footnotes)

    def cell(self, platform: str, version: str, evidence: str) -> Cell:
        place = (platform, version, evidence)
        results = tuple(
            sorted(
                (r for r in self.results if (r.platform, r.version, r.evidence) == place),
                key=lambda r: r.target,
            )
        )
        issues = [issue for issue in self.known_issues if _applies(issue, place, results)]
        notes = self._skip_notes(results, platform, evidence) + [
            self.footnotes.ref(issue.summary, issue.link) for issue in issues
        ]
        symbol = _symbol(results, issues)
        return Cell(platform, version, evidence, symbol, results, tuple(dict.fromkeys(notes)))

    def _skip_notes(self, results: tuple[Result, ...], platform: str, evidence: str) -> list[int]:
        if not results:
            return [self.footnotes.ref(self._missing_reason(platform, evidence))]
        return [self.footnotes.ref(result.skip_reason) for result in results if not result.ran]

    def _missing_reason(self, platform: str, evidence: str) -> str:
        targets = (self.planned or {}).get((platform, evidence))
        if not targets:
            return NO_TARGET
        return f"no result from {', '.join(targets)} (in matrix.yaml, but it did not run)"


def _applies(issue: KnownIssue, place: tuple[str, str, str], results: Sequence[Result]) -> bool:
    """The issue's scope holds the cell: its platform, version and evidence, and one of the
    cell's results when it names a target, check or channel."""
    if issue.target is None and issue.check is None and issue.channel is None:
        return issue.applies_to(*place)
    return any(
        issue.applies_to(*place, target=r.target, check=r.check, channel=r.channel) for r in results
    )


def _symbol(results: Sequence[Result], issues: Sequence[KnownIssue]) -> str:
    ran = [result for result in results if result.ran]
    if not ran:
        return UNKNOWN
    if any(result.failed for result in ran):
        return FAIL
    if any(issue.is_issue for issue in issues):
        return KNOWN_ISSUE
    return PASS


@dataclass
class _ContextCellBuilder:
    """Contextualization cells. Known issues are not applied: they name no check or channel."""

    results: list[Result]
    planned: _Plan | None
    footnotes: _Footnotes

    def cell(self, platform: str) -> ContextCell:
        mine = sorted(
            (result for result in self.results if result.platform == platform),
            key=lambda r: (r.target, r.version, r.channel or ""),
        )
        profile = [result for result in mine if result.evidence == "profile"]
        entries = tuple(self._entry(result, profile) for result in profile)
        notes = [] if profile else [self.footnotes.ref(self._missing_reason(platform))]
        notes += [
            self.footnotes.ref(f"real platform: {_context_note(result)}")
            for result in mine
            if result.evidence == "real"
        ]
        symbol = _context_symbol([entry.symbol for entry in entries])
        return ContextCell(platform, symbol, entries, tuple(dict.fromkeys(notes)))

    def _entry(self, result: Result, neighbours: Sequence[Result]) -> ContextEntry:
        symbol = _context_entry_symbol(result)
        label = _context_label(result, neighbours)
        if symbol == PASS:
            return ContextEntry(result, symbol, label)
        # a skip shares its footnote with the boot cells skipped for the same reason
        text = result.skip_reason if symbol == UNKNOWN else _context_note(result)
        return ContextEntry(result, symbol, label, (self.footnotes.ref(text),))

    def _missing_reason(self, platform: str) -> str:
        return NO_CONTEXT_RESULT if (self.planned or {}).get((platform, "profile")) else NO_TARGET


def _is_partial(result: Result) -> bool:
    """Failed after the boot succeeded, with some steps in effect and some recorded missing."""
    return (
        result.failed
        and result.failed_phase is None
        and bool(result.took_effect and result.missing)
    )


def _context_entry_symbol(result: Result) -> str:
    if result.passed:
        return PASS
    if not result.ran:
        return UNKNOWN
    return PARTIAL if _is_partial(result) else FAIL


def _context_symbol(symbols: Sequence[str]) -> str:
    """Like ``_symbol``: any failure is ✗, nothing that ran is ?, so ✓ needs every run passed."""
    ran = [symbol for symbol in symbols if symbol != UNKNOWN]
    if not ran:
        return UNKNOWN
    return next((worst for worst in (FAIL, PARTIAL) if worst in ran), PASS)


def _context_note(result: Result) -> str:
    """Which result (target · version · channel), and what it says."""
    channel = result.channel or "(no channel label)"
    return f"{result.target} · {result.version} · {channel}: {_outcome(result)}"


def _context_label(result: Result, neighbours: Sequence[Result]) -> str:
    """The channel, with the target or version only when the cell's results need telling apart."""
    parts = [result.channel] if result.channel else []
    if len({r.target for r in neighbours}) > 1 or not parts:
        parts.insert(0, result.target)
    if len({r.version for r in neighbours}) > 1:
        parts.append(f"({result.version})")
    return " ".join(parts)


def _outcome(result: Result) -> str:
    """What a context result says, for its footnote."""
    if result.passed:
        return f"passed {result.stop:%Y-%m-%d}"
    if not result.ran:
        return f"not run: {result.skip_reason}"
    if _is_partial(result):
        return (
            f"partly: took effect: {', '.join(result.took_effect)}; "
            f"did not take effect: {', '.join(result.missing)}"
        )
    return _failure(result)


def _failure(result: Result) -> str:
    phase = f" in phase {result.failed_phase}" if result.failed_phase else ""
    message = result.first_message_line
    return f"{result.status}{phase}" + (f": {message}" if message else "")


# --- the rebase column --------------------------------------------------------------------------

PlannedRebase = tuple[str, str, str, str, str]
"""A rebase cell of matrix.yaml: (target, platform, evidence, FROM, TO)."""
_RebaseKey = tuple[str, str | None, str]  # (target, FROM, TO); FROM None: not labelled


@dataclass
class _RebaseCellBuilder:
    """Rebase cells: an entry per (target, FROM → TO), planned or reported. Known issues are not
    applied (they name no check); ✓ needs every entry passed: a skip or a missing result is ?."""

    results: list[Result]
    planned: list[PlannedRebase] | None
    footnotes: _Footnotes

    def cell(self, platform: str) -> RebaseCell:
        mine = [result for result in self.results if result.platform == platform]
        cells = self._cells(platform, [result for result in mine if result.evidence == "profile"])
        several = len({target for target, _, _ in cells}) > 1
        entries = tuple(self._entry(key, result, several) for key, result in cells.items())
        notes = [] if entries else [self.footnotes.ref(self._missing_reason())]
        notes += [
            self.footnotes.ref(f"real platform: {result.target} · {result.pair}: {outcome}")
            for result in sorted(mine, key=_rebase_order)
            if result.evidence == "real"
            for outcome in _rebase_outcome(result)
        ]
        symbol = _rebase_symbol([entry.symbol for entry in entries])
        return RebaseCell(platform, symbol, entries, tuple(dict.fromkeys(notes)))

    def _cells(self, platform: str, results: list[Result]) -> dict[_RebaseKey, Result | None]:
        """The planned cells in matrix.yaml's order, then any other reported, sorted."""
        reported = {(r.target, r.rebase_from, r.version): r for r in results}
        cells: dict[_RebaseKey, Result | None] = {
            (target, source, dest): reported.get((target, source, dest))
            for target, where, evidence, source, dest in self.planned or ()
            if (where, evidence) == (platform, "profile")
        }
        for result in sorted(results, key=_rebase_order):
            cells.setdefault((result.target, result.rebase_from, result.version), result)
        return cells

    def _entry(self, key: _RebaseKey, result: Result | None, several: bool) -> RebaseEntry:
        target, source, dest = key
        pair = result.pair if result else f"{source} → {dest}"
        label = f"{target} {pair}" if several else pair
        if result is None:  # the boot cell of a lone target says the same: one footnote
            text = f"no result from {target} (in matrix.yaml, but it did not run)"
            return RebaseEntry(target, pair, None, UNKNOWN, label, (self.footnotes.ref(text),))
        symbol = _rebase_entry_symbol(result)
        if symbol == PASS:
            return RebaseEntry(target, pair, result, symbol, label)
        texts = (
            [result.skip_reason]  # shared with the boot cells skipped for the same reason
            if symbol == UNKNOWN
            else [f"{target} · {pair}: {outcome}" for outcome in _rebase_outcome(result)]
        )
        notes = tuple(dict.fromkeys(self.footnotes.ref(text) for text in texts))
        return RebaseEntry(target, pair, result, symbol, label, notes)

    def _missing_reason(self) -> str:
        return NO_REBASE_RESULT if self.planned is None else NO_REBASE_CELL


def _rebase_order(result: Result) -> tuple[str, str, str]:
    return (result.target, result.rebase_from or "", result.version)


def _rebase_entry_symbol(result: Result) -> str:
    """A failed rule is ✗ even on a result that says it passed: ✓ needs both."""
    if not result.ran:
        return UNKNOWN
    return FAIL if result.failed or result.failed_rules else PASS


def _rebase_symbol(symbols: Sequence[str]) -> str:
    """✗ if any entry failed; ✓ only if there are entries and every one passed; else ?."""
    if FAIL in symbols:
        return FAIL
    return PASS if symbols and all(symbol == PASS for symbol in symbols) else UNKNOWN


def _rebase_outcome(result: Result) -> list[str]:
    """What a rebase result says: a line per failed rule (what it found, when labelled)."""
    if not result.ran:
        return [f"not run: {result.skip_reason}"]
    if result.failed_rules:
        return [_rule_failure(result, name) for name in result.failed_rules]
    if result.failed:
        return [_failure(result)]
    return [f"passed {result.stop:%Y-%m-%d}"]


def _rule_failure(result: Result, name: str) -> str:
    found = (line for line in result.rule_failures if line.split(maxsplit=1)[0] == name)
    return next(found, f"rule {name} failed")
