"""The release gate: every result of a required tier must be a pass."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from lab.evidence import REBASE_CHECK, Result, latest_results
from lab.known_issues import KnownIssue


@dataclass
class GateVerdict:
    passed: bool
    reasons: list[str]
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The verdict as text: a headline, then why (``reasons``), then what was allowed."""
        headline = "gate: PASSED" if self.passed else "gate: FAILED"
        return [
            headline,
            *(f"  - {reason}" for reason in self.reasons),
            *(f"  note: {note}" for note in self.notes),
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def verdict(
    results: Iterable[Result],
    *,
    required_tiers: Collection[int],
    allow_known_issues: bool,
    known_issues: Sequence[KnownIssue],
    planned: Iterable[tuple[str, str, int]] = (),
    planned_rebase: Iterable[tuple[str, str, str, int]] = (),
) -> GateVerdict:
    """Judge the newest result of each (target, version, check, rebase FROM) of the required tiers.

    A failed or broken result fails the gate; so does a skipped one (a required cell that did
    not run is not a pass); so does a pass with a known issue of kind "issue", unless
    ``allow_known_issues``. No result at all of a required tier fails the gate too, and so
    does a planned (target, version, tier) cell of a required tier that has no result (a
    shard left out, a run cut short, a --targets selection), or a planned rebase cell
    (target, FROM, TO, tier) without a ``rebase`` result of that pair.
    """
    required = sorted(
        (result for result in latest_results(results) if result.tier in required_tiers),
        key=lambda r: (r.tier, r.target, r.version, r.check),
    )
    tiers = ", ".join(str(tier) for tier in sorted(required_tiers))
    if required_tiers and not required:
        return GateVerdict(False, [f"no result of required tier(s) {tiers}: nothing was proven"])
    reported = {(r.target, r.version) for r in required if r.check != REBASE_CHECK}
    rebased = {(r.target, r.rebase_from, r.version) for r in required if r.check == REBASE_CHECK}
    unreported = [
        f"{target} · {version} (tier {tier})"
        for target, version, tier in sorted(planned)
        if tier in required_tiers and (target, version) not in reported
    ] + [
        f"{target} · {source} → {dest} {REBASE_CHECK} (tier {tier})"
        for target, source, dest, tier in sorted(planned_rebase)
        if tier in required_tiers and (target, source, dest) not in rebased
    ]
    reasons = [
        f"{cell}: no result; a required cell that did not report is not a pass"
        for cell in unreported
    ]
    notes: list[str] = []
    for result in required:
        problem, note = _judge(result, allow_known_issues, known_issues)
        reasons += problem
        notes += note
    if not reasons:
        reasons.append(f"all {len(required)} result(s) of required tier(s) {tiers or '-'} passed")
        return GateVerdict(True, reasons, notes)
    return GateVerdict(False, reasons, notes)


def _judge(
    result: Result, allow_known_issues: bool, known_issues: Sequence[KnownIssue]
) -> tuple[list[str], list[str]]:
    """(reasons the result fails the gate, notes on what was allowed)."""
    where = f"{result.describe()} (tier {result.tier}, {result.platform}, {result.evidence})"
    if not result.ran:
        return [
            f"{where}: did not run ({result.skip_reason}); a required cell that did not run "
            "is not a pass"
        ], []
    if result.failed:
        phase = f" in phase {result.failed_phase}" if result.failed_phase else ""
        message = result.message.strip().splitlines()[0] if result.message.strip() else ""
        return [f"{where}: {result.status}{phase}" + (f": {message}" if message else "")], []
    issues = [
        issue.summary
        for issue in known_issues
        if issue.is_issue
        and issue.applies_to(
            result.platform,
            result.version,
            result.evidence,
            target=result.target,
            check=result.check,
            channel=result.channel,
        )
    ]
    if not issues:
        return [], []
    text = f"{where}: passed with known issue(s): {'; '.join(issues)}"
    if allow_known_issues:
        return [], [f"{text} (allowed: allow_known_issues is true)"]
    return [f"{text}; allow_known_issues is false"], []
