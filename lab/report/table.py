"""The support-status table: platforms x (OS version, kind of evidence), built from allure-results.

A cell is ✓ only with evidence: a passed result, its date and its console log. A cell where
nothing ran is ``?``, with a footnote saying why. Profile runs (here, on emulated hardware of
the platform) and real runs (on the platform itself) are separate columns. The ``boot`` table
ends with a contextualization column: one entry per channel of the platform's ``context``
results (profile runs; real-platform ones are footnotes), ◐ when only some steps took effect.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    from lab.report.known_issues import KnownIssue

PLATFORMS: tuple[str, ...] = (
    "VirtualBox",
    "VMware",
    "KVM",
    "Xen",
    "Microsoft Hyper-V",
    "Parallels",
    "OpenStack",
    "OpenNebula",
    "Amazon EC2",
    "Google Compute Engine",
)
EVIDENCE: tuple[str, ...] = ("profile", "real")
EVIDENCE_TITLES = {"profile": "profile run here", "real": "real platform"}

PASS, FAIL, KNOWN_ISSUE, UNKNOWN, PARTIAL = "✓", "✗", "⚡", "?", "◐"
SYMBOL_CLASSES = {
    PASS: "pass",
    FAIL: "fail",
    KNOWN_ISSUE: "known",
    UNKNOWN: "unknown",
    PARTIAL: "partial",
}
LEGEND = (
    (PASS, "passed: every target of the cell that ran passed"),
    (FAIL, "failed or broken: the target and the phase it failed in are shown"),
    (KNOWN_ISSUE, "passed, with a known issue (see its footnote)"),
    (UNKNOWN, "no evidence: skipped or not run (see its footnote); never counted as a pass"),
)
COLUMNS_NOTE = (
    "profile run here: booted here in QEMU on that platform's virtual hardware "
    "(accelerator in parentheses: kvm, or tcg = software emulation); it proves the image "
    "works with that hardware, not the platform. real platform: booted on the platform "
    "itself. Dates are UTC, of the newest run in the cell."
)
BOOT_CHECK, CONTEXT_CHECK = "boot", "context"
CONTEXT_TITLE = "contextualization"
CONTEXT_LEGEND = (PARTIAL, "partly: some steps took effect, see the footnote")
CONTEXT_NOTE = (
    "contextualization: booted here with user-data on each channel the platform hands it to "
    "the guest by (nocloud, config-drive, ec2-imds, ...), the newest result per target, version "
    "and channel; results on the real platform are footnotes."
)
NO_CONTEXT_RESULT = "no context result (not run)"

LABEL_PREFIX = "ucvm."
REQUIRED_LABELS = ("check", "target", "platform", "version", "evidence", "tier")
CONSOLE_ATTACHMENT = "console.log"
NO_TARGET = "no target in matrix.yaml"


class ResultsError(ValueError):
    """An allure result of the boot suite is unreadable or mislabelled (names file and label)."""


@dataclass(frozen=True)
class Result:
    """One boot-suite test result, from the ``ucvm.*`` labels of an allure result."""

    check: str
    target: str
    platform: str
    version: str
    evidence: str
    tier: int
    status: str
    message: str
    stop: datetime
    accel: str | None = None
    failed_phase: str | None = None
    console: Path | None = None
    channel: str | None = None  # the contextualization channel (check ``context``)
    took_effect: tuple[str, ...] = ()  # context steps that took effect inside the guest
    missing: tuple[str, ...] = ()  # context steps that did not

    @property
    def ran(self) -> bool:
        return self.status != "skipped"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failed(self) -> bool:
        """failed, broken, or any status that is neither passed nor skipped."""
        return self.ran and not self.passed

    @property
    def rerun_key(self) -> tuple[str, str, str, str | None]:
        return (self.target, self.version, self.check, self.channel)

    @property
    def skip_reason(self) -> str:
        reason = self.message.strip().removeprefix("Skipped:").strip()
        return reason or "skipped without a reason"

    @property
    def first_message_line(self) -> str:
        lines = self.message.strip().splitlines()
        return lines[0].strip() if lines else ""

    def describe(self) -> str:
        channel = f" {self.channel}" if self.channel else ""
        return f"{self.target} {self.version} {self.check}{channel}"


# --- reading allure-results -------------------------------------------------------------------


def read_results(dirs: Sequence[Path]) -> list[Result]:
    """All boot-suite results of these allure-results directories (CI shards), merged.

    Results without a ``ucvm.check`` label (ordinary unit tests) are left out. Reruns are
    kept: ``latest_results`` (used by ``build_table`` and the gate) picks the newest.
    """
    results: list[Result] = []
    for directory in dirs:
        if not directory.is_dir():
            raise ResultsError(f"{directory}: no such directory of allure results")
        for path in sorted(directory.glob("*-result.json")):
            result = _read_result(path)
            if result is not None:
                results.append(result)
    return results


def latest_results(results: Iterable[Result]) -> list[Result]:
    """One result per (target, version, check, channel): the one with the newest ``stop``."""
    newest: dict[tuple[str, str, str, str | None], Result] = {}
    for result in results:
        kept = newest.get(result.rerun_key)
        if kept is None or result.stop > kept.stop:
            newest[result.rerun_key] = result
    return list(newest.values())


def _read_result(path: Path) -> Result | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path}: unreadable allure result: {error}") from error
    labels = _ucvm_labels(data)
    if "check" not in labels:
        return None
    missing = [LABEL_PREFIX + name for name in REQUIRED_LABELS if name not in labels]
    if missing:
        raise ResultsError(f"{path}: missing label(s): {', '.join(missing)}")
    return Result(
        check=labels["check"],
        target=labels["target"],
        platform=_label_choice(path, labels, "platform", PLATFORMS),
        version=labels["version"],
        evidence=_label_choice(path, labels, "evidence", EVIDENCE),
        tier=_tier(path, labels["tier"]),
        status=str(data.get("status") or "unknown"),
        message=str((data.get("statusDetails") or {}).get("message") or ""),
        stop=_stop(path, data),
        accel=labels.get("accel"),
        failed_phase=labels.get("failed_phase"),
        console=_console(path.parent, data),
        channel=labels.get("channel") or None,
        took_effect=_steps(labels.get("context_took_effect")),
        missing=_steps(labels.get("context_missing")),
    )


def _steps(value: str | None) -> tuple[str, ...]:
    """A comma-separated label value as a tuple; empty or absent gives ()."""
    return tuple(step.strip() for step in (value or "").split(",") if step.strip())


def _ucvm_labels(data: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for label in data.get("labels") or []:
        name = str(label.get("name", ""))
        if name.startswith(LABEL_PREFIX):
            labels[name.removeprefix(LABEL_PREFIX)] = str(label.get("value", ""))
    return labels


def _label_choice(path: Path, labels: dict[str, str], name: str, allowed: Sequence[str]) -> str:
    value = labels[name]
    if value not in allowed:
        raise ResultsError(
            f"{path}: label {LABEL_PREFIX}{name}={value!r}: expected one of: {', '.join(allowed)}"
        )
    return value


def _tier(path: Path, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        message = f"{path}: label {LABEL_PREFIX}tier={value!r}: expected 1, 2 or 3"
        raise ResultsError(message) from None


def _stop(path: Path, data: dict[str, Any]) -> datetime:
    millis = data.get("stop") or data.get("start")
    if not isinstance(millis, int | float):
        raise ResultsError(f"{path}: no 'stop' time (epoch milliseconds)")
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


def _console(directory: Path, data: dict[str, Any]) -> Path | None:
    for attachment in _attachments(data):
        if attachment.get("name") == CONSOLE_ATTACHMENT and attachment.get("source"):
            path = directory / str(attachment["source"])
            if path.is_file():
                return path
    return None


def _attachments(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Attachments of a result and of its steps, depth first."""
    yield from node.get("attachments") or []
    for step in node.get("steps") or []:
        yield from _attachments(step)


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
class Row:
    platform: str
    cells: tuple[Cell, ...]
    context: ContextCell | None = None


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


def build_table(
    results: Iterable[Result],
    *,
    versions: Sequence[str],
    known_issues: Sequence[KnownIssue],
    check: str = "boot",
    sources: Sequence[Path] = (),
    planned: Iterable[tuple[str, str, str]] | None = None,
    built_at: datetime | None = None,
) -> SupportTable:
    """The table of ``check``: a row per platform, two columns (profile, real) per version.

    The ``boot`` table adds a contextualization column built from the ``context`` results.
    ``planned``: optional (target, platform, evidence) triples from matrix.yaml; a cell with no
    result then says which planned targets did not report, instead of "no target in matrix.yaml".
    """
    latest = latest_results(results)
    checks = (check, CONTEXT_CHECK) if check == BOOT_CHECK else (check,)
    chosen = [result for result in latest if result.check in checks]
    shown = [result for result in chosen if result.version in versions]
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
    columns = [(version, evidence) for version in versions for evidence in EVIDENCE]
    rows = [
        Row(
            platform,
            tuple(builder.cell(platform, v, e) for v, e in columns),
            context.cell(platform) if check == BOOT_CHECK else None,
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
            for result in chosen
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
        issues = [issue for issue in self.known_issues if issue.applies_to(*place)]
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


# --- rendering ----------------------------------------------------------------------------------


def _entry_text(result: Result) -> str:
    if result.passed:
        return f"{result.target} ({result.accel})" if result.accel else result.target
    if not result.ran:
        return f"{result.target}: skipped"
    phase = f" in phase {result.failed_phase}" if result.failed_phase else ""
    return f"{result.target}: {result.status}{phase}"


def _href(path: Path, link_base: Path) -> str:
    """A relative URL from the directory the page is written to."""
    return quote(Path(os.path.relpath(path.resolve(), link_base.resolve())).as_posix())


def _web_link(link: str | None) -> str | None:
    """Only http(s) links become hyperlinks; anything else stays text."""
    return link if link and urlsplit(link).scheme in ("http", "https") else None


def _column_titles(table: SupportTable) -> list[tuple[str, str]]:
    """(top, bottom) lines of each column's title after "Platform"."""
    titles = [(version, EVIDENCE_TITLES[evidence]) for version, evidence in table.columns]
    if table.has_context:
        titles.append((CONTEXT_TITLE, EVIDENCE_TITLES["profile"]))
    return titles


def _notes_on_columns(table: SupportTable) -> str:
    return f"{COLUMNS_NOTE} {CONTEXT_NOTE}" if table.has_context else COLUMNS_NOTE


def _built_line(table: SupportTable) -> str:
    sources = ", ".join(str(source) for source in table.sources) or "(directories not given)"
    built = f"{table.built_at:%Y-%m-%d %H:%M} UTC"
    return f"Built {built} from the {table.check!r} results in {sources}."


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell (HTML-escaped, Markdown punctuation escaped)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def render_markdown(table: SupportTable, *, link_base: Path) -> str:
    """GitHub-flavoured Markdown; links are relative to ``link_base`` (where the file goes)."""
    header = ["Platform", *(f"{top} · {bottom}" for top, bottom in _column_titles(table))]
    lines = [
        f"# Support status: {_md(table.check)}",
        "",
        "| " + " | ".join(_md(title) for title in header) + " |",
        "|" + " --- |" * len(header),
    ]
    for row in table.rows:
        cells = [_md_cell(cell, link_base) for cell in row.cells]
        if row.context is not None:
            cells.append(_md_context_cell(row.context, link_base))
        lines.append("| " + " | ".join([_md(row.platform), *cells]) + " |")
    lines += ["", *(f"- {symbol} {_md(text)}" for symbol, text in table.legend), ""]
    lines += [_md(_notes_on_columns(table)), "", *_md_footnotes(table.footnotes)]
    lines += [f"Not in the table: {_md(text)}\n" for text in table.ignored]
    return "\n".join([*lines, _md(_built_line(table)), ""])


def _md_cell(cell: Cell, link_base: Path) -> str:
    head = f"{cell.symbol} {cell.date:%Y-%m-%d}" if cell.date else cell.symbol
    entries = [_md_entry(result, link_base) for result in cell.results]
    refs = _md_refs(cell.notes)
    return "<br>".join([head, *entries]) + (f" {refs}" if refs else "")


def _md_entry(result: Result, link_base: Path, text: str | None = None) -> str:
    text = _md(_entry_text(result) if text is None else text)
    if result.console is None:
        return text
    return f"{text} [{_md(CONSOLE_ATTACHMENT)}]({_href(result.console, link_base)})"


def _md_refs(numbers: Iterable[int]) -> str:
    return "".join(f"\\[{number}\\]" for number in numbers)


def _md_context_cell(cell: ContextCell, link_base: Path) -> str:
    head = f"{cell.symbol} {cell.date:%Y-%m-%d}" if cell.date else cell.symbol
    entries = [
        _md_entry(entry.result, link_base, f"{entry.symbol} {entry.label}")
        + (f" {_md_refs(entry.notes)}" if entry.notes else "")
        for entry in cell.entries
    ]
    refs = _md_refs(cell.notes)
    return "<br>".join([head + (f" {refs}" if refs else ""), *entries])


def _md_footnotes(footnotes: Sequence[Footnote]) -> list[str]:
    lines = []
    for note in footnotes:
        link = _web_link(note.link)
        suffix = f" ([link]({link}))" if link else (f" ({_md(note.link)})" if note.link else "")
        lines.append(f"{note.number}. {_md(note.text)}{suffix}")
    return [*lines, ""] if lines else []


_PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #202124;
       margin: 2rem auto; max-width: 80rem; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #dadce0; padding: .45rem .6rem; vertical-align: top; text-align: left; }
thead th { background: #f8f9fa; }
thead small { color: #5f6368; font-weight: normal; }
tbody th { white-space: nowrap; }
td ul { margin: .2rem 0 0; padding-left: 1.1rem; }
td time { color: #3c4043; font-size: .9em; }
.symbol { font-weight: bold; font-size: 1.15em; }
.pass { background: #e6f4ea; } .pass .symbol { color: #137333; }
.fail { background: #fce8e6; } .fail .symbol { color: #c5221f; }
.known { background: #fef7e0; } .known .symbol { color: #b06000; }
.unknown { background: #f1f3f4; } .unknown .symbol { color: #5f6368; }
.partial { background: #fff0e0; } .partial .symbol { color: #b45309; }
.symbol.pass { color: #137333; } .symbol.fail { color: #c5221f; }
.symbol.known { color: #b06000; } .symbol.unknown { color: #5f6368; }
.symbol.partial { color: #b45309; }
td li .symbol { font-size: 1em; padding: 0 .2rem; border-radius: 3px; }
.legend { list-style: none; padding: 0; } .legend li { margin: .15rem 0; }
.legend .symbol { display: inline-block; width: 1.6rem; text-align: center; border-radius: 3px; }
.meta, .columns { color: #5f6368; }
sup a { text-decoration: none; }
</style>
</head>
<body>
<h1>$title</h1>
<table>
<thead><tr><th scope="col">Platform</th>$header</tr></thead>
<tbody>
$rows
</tbody>
</table>
<ul class="legend">
$legend
</ul>
<p class="columns">$columns</p>
$footnotes
$ignored
<p class="meta">$built</p>
</body>
</html>
"""
)


def render_html(table: SupportTable, *, link_base: Path) -> str:
    """One self-contained page (inline CSS, no scripts); links are relative to ``link_base``."""
    esc = html.escape
    return _PAGE.substitute(
        title=esc(f"Support status: {table.check}"),
        header="".join(
            f'<th scope="col">{esc(top)}<br><small>{esc(bottom)}</small></th>'
            for top, bottom in _column_titles(table)
        ),
        rows="\n".join(_html_row(row, link_base) for row in table.rows),
        legend="\n".join(
            f'<li><span class="symbol {SYMBOL_CLASSES[s]}">{esc(s)}</span> {esc(text)}</li>'
            for s, text in table.legend
        ),
        columns=esc(_notes_on_columns(table)),
        footnotes=_html_footnotes(table.footnotes),
        ignored="\n".join(f'<p class="meta">Not in the table: {esc(t)}</p>' for t in table.ignored),
        built=esc(_built_line(table)),
    )


def _html_row(row: Row, link_base: Path) -> str:
    cells = "".join(_html_cell(cell, link_base) for cell in row.cells)
    if row.context is not None:
        cells += _html_context_cell(row.context, link_base)
    return f'<tr><th scope="row">{html.escape(row.platform)}</th>{cells}</tr>'


def _html_cell(cell: Cell, link_base: Path) -> str:
    date = f" <time>{cell.date:%Y-%m-%d}</time>" if cell.date else ""
    refs = _html_refs(cell.notes)
    entries = "".join(_html_entry(result, link_base) for result in cell.results)
    items = f"<ul>{entries}</ul>" if entries else ""
    return (
        f'<td class="{SYMBOL_CLASSES[cell.symbol]}"><span class="symbol">{cell.symbol}</span>'
        f"{date} {refs}{items}</td>"
    )


def _html_refs(numbers: Iterable[int]) -> str:
    return "".join(f'<sup><a href="#fn-{n}">[{n}]</a></sup>' for n in numbers)


def _html_entry(result: Result, link_base: Path, label: str = "", refs: str = "") -> str:
    """A result as a list item; ``label`` (HTML) replaces the usual text, ``refs`` follow."""
    title = f' title="{html.escape(result.message)}"' if result.message else ""
    link = ""
    if result.console is not None:
        href = html.escape(_href(result.console, link_base))
        link = f' <a href="{href}">{CONSOLE_ATTACHMENT}</a>'
    return f"<li{title}>{label or html.escape(_entry_text(result))}{link}{refs}</li>"


def _html_context_cell(cell: ContextCell, link_base: Path) -> str:
    date = f" <time>{cell.date:%Y-%m-%d}</time>" if cell.date else ""
    entries = "".join(
        _html_entry(entry.result, link_base, _html_context_label(entry), _html_refs(entry.notes))
        for entry in cell.entries
    )
    items = f"<ul>{entries}</ul>" if entries else ""
    return (
        f'<td class="{SYMBOL_CLASSES[cell.symbol]}"><span class="symbol">{cell.symbol}</span>'
        f"{date} {_html_refs(cell.notes)}{items}</td>"
    )


def _html_context_label(entry: ContextEntry) -> str:
    symbol = f'<span class="symbol {SYMBOL_CLASSES[entry.symbol]}">{entry.symbol}</span>'
    return f"{symbol} {html.escape(entry.label)}"


def _html_footnotes(footnotes: Sequence[Footnote]) -> str:
    if not footnotes:
        return ""
    items = []
    for note in footnotes:
        link = _web_link(note.link)
        if link:
            suffix = f' (<a href="{html.escape(link)}">link</a>)'
        else:
            suffix = f" ({html.escape(note.link)})" if note.link else ""
        items.append(
            f'<li id="fn-{note.number}" value="{note.number}">{html.escape(note.text)}{suffix}</li>'
        )
    return '<ol class="footnotes">\n' + "\n".join(items) + "\n</ol>"


def write_table(table: SupportTable, out_dir: Path) -> tuple[Path, Path]:
    """Write support-table.md and support-table.html into ``out_dir`` (links relative to it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "support-table.md"
    page = out_dir / "support-table.html"
    markdown.write_text(render_markdown(table, link_base=out_dir), encoding="utf-8")
    page.write_text(render_html(table, link_base=out_dir), encoding="utf-8")
    return markdown, page
