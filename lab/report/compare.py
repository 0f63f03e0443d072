"""The gate against the last release: a candidate and its baseline, judged from one run.

A gate run (``ucvm-lab gate --candidate TAG``) runs every cell of the required tiers for both
sides, ``min_boots`` rounds each, interleaved; each result carries its side and round
(lab/evidence.py). This module turns those results into a ``Comparison``:

- per cell (target, check, channel; a rebase cell runs baseline → candidate, so it has one
  side only), each side's state from all its rounds and retries: pass, flaky (a round failed,
  then passed its retry), fail, incomplete (the infrastructure failed it; no verdict) or
  skipped;
- the cell's outcome, britney's words for the pair: pass, REGRESSION (passed on the baseline,
  fails on the candidate), ALWAYSFAIL (fails on both), FIXED (fails on the baseline only),
  flaky, incomplete;
- per figure of the gate's ``max_ratio`` (lab/evidence.py boot_figures, and the image's
  bytes), the medians of both sides, their spread and the ratio against the budget. Ratios
  come only from boots of the same run, so that host load hits both sides alike;
- the waivers (known issues of kind ``issue``, unexpired, whose scope holds the cell) that
  turned a REGRESSION or ALWAYSFAIL into a pass, listed in the verdict.

Exit codes (``Comparison.exit_code``): 0 passed, 1 a regression (or ALWAYSFAIL, flaky, a figure
over budget) not waived, 2 incomplete: something could not be judged. 3, bad input, is the
command line's.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from enum import StrEnum

from lab.evidence import BOOT_CHECK, REBASE_CHECK, Result
from lab.known_issues import KnownIssue

PASSED, FAILED, INCOMPLETE = 0, 1, 2
BAD_INPUT = 3
"""The verdict's exit codes; BAD_INPUT is the command line's (nothing was judged)."""


class SideState(StrEnum):
    PASS = "pass"
    FLAKY = "flaky"  # every round passed in the end, one only on its retry
    FAIL = "fail"
    INCOMPLETE = "incomplete"  # a round's last attempt failed for the infrastructure
    SKIPPED = "skipped"  # did not run (the target cannot run here, or no result)


class Outcome(StrEnum):
    PASS = "pass"
    REGRESSION = "REGRESSION"
    ALWAYSFAIL = "ALWAYSFAIL"
    FIXED = "FIXED"
    FLAKY = "flaky"
    INCOMPLETE = "incomplete"
    NOT_RUN = "not run"  # skipped on both sides for the same reason: it cannot run here


BLOCKING = (Outcome.REGRESSION, Outcome.ALWAYSFAIL)
"""What a waiver may turn into a pass; flaky blocks too, unless ``flaky_is_pass``."""


@dataclass(frozen=True)
class Policy:
    """matrix.yaml's ``gate:`` as plain data (the report does not read the matrix)."""

    required_tiers: tuple[int, ...]
    min_boots: int
    max_ratio: Mapping[str, float]
    flaky_is_pass: bool = False


@dataclass(frozen=True)
class Side:
    """What one side of the gate is: the OS tag and the boot loader it boots with."""

    tag: str
    snapshot: str = ""
    loader: str = ""


@dataclass
class FigureComparison:
    """One cell's figure: each side's value per boot, and the budget ratio (``max_ratio``)."""

    cell: str
    figure: str
    baseline: list[float]
    candidate: list[float]
    max_ratio: float  # the candidate's median may be this many times the baseline's

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def candidate_median(self) -> float | None:
        return statistics.median(self.candidate) if self.candidate else None

    @property
    def ratio(self) -> float | None:
        base, cand = self.baseline_median, self.candidate_median
        if base is None or cand is None:
            return None
        if base == 0:
            return 1.0 if cand == 0 else float("inf")
        return cand / base

    @property
    def budget(self) -> float | None:
        """The budget as a value of the figure: the baseline's median × ``max_ratio``."""
        median = self.baseline_median
        return None if median is None else median * self.max_ratio

    @property
    def over(self) -> bool:
        """Over budget; False when a side has no value (nothing to judge: ``ratio`` is None)."""
        return self.ratio is not None and self.ratio > self.max_ratio

    def line(self) -> str:
        """``kvm boot ready_s: 41.2 s [39.8–44.0] vs 30.1 s [29.5–31.0]: 1.37 > 1.25``."""
        ratio = self.ratio
        verdict = "over budget" if self.over else "within budget"
        ratio_text = "∞" if ratio == float("inf") else f"{ratio:.2f}" if ratio else "-"
        return (
            f"{self.cell} {self.figure}: candidate {_spread(self.candidate)} vs baseline "
            f"{_spread(self.baseline)}: ratio {ratio_text} (budget {self.max_ratio:.2f}, {verdict})"
        )


@dataclass
class CellComparison:
    cell: str  # "kvm boot", "kvm context nocloud", "kvm rebase 1.2 → 1.3"
    platform: str
    tier: int
    baseline: SideState | None  # None: a cell of the candidate only (rebase)
    candidate: SideState
    outcome: Outcome
    why: str = ""  # what failed, for the verdict's line
    waived_by: str | None = None  # the known issue that waived a blocking outcome

    @property
    def blocks(self) -> bool:
        return self.outcome in BLOCKING and self.waived_by is None


@dataclass
class Comparison:
    candidate: Side
    baseline: Side
    policy: Policy
    cells: list[CellComparison]
    figures: list[FigureComparison]
    notes: list[str] = field(default_factory=list)

    @property
    def incomplete(self) -> list[str]:
        cells = [c.cell for c in self.cells if c.outcome == Outcome.INCOMPLETE]
        figures = [
            f"{f.cell} {f.figure}: {len(f.baseline)} baseline and {len(f.candidate)} candidate "
            f"boot(s), {self.policy.min_boots} needed"
            for f in self.figures
            if min(len(f.baseline), len(f.candidate)) < self.policy.min_boots
        ]
        return cells + figures

    def failures(self) -> list[str]:
        """What fails the gate: blocking outcomes not waived, flaky cells (unless the policy
        counts them as passes), and figures over budget (of cells with enough boots)."""
        failing = [
            c for c in self.cells
            if c.blocks or (c.outcome == Outcome.FLAKY and not self.policy.flaky_is_pass)
        ]  # fmt: skip
        lines = [f"{c.cell}: {c.outcome}" + (f" ({c.why})" if c.why else "") for c in failing]
        return lines + [f.line() for f in self.figures if f.over and self._judged(f)]

    def _judged(self, figure: FigureComparison) -> bool:
        return min(len(figure.baseline), len(figure.candidate)) >= self.policy.min_boots

    @property
    def exit_code(self) -> int:
        if self.failures():
            return FAILED
        if self.incomplete or not any(c.outcome != Outcome.NOT_RUN for c in self.cells):
            return INCOMPLETE
        return PASSED

    @property
    def passed(self) -> bool:
        return self.exit_code == PASSED

    def lines(self) -> list[str]:
        headline = {PASSED: "PASSED", FAILED: "FAILED", INCOMPLETE: "INCOMPLETE"}[self.exit_code]
        lines = [
            f"gate: {headline}: candidate {self.candidate.tag} against baseline "
            f"{self.baseline.tag} ({len(self.cells)} cell(s), {self.policy.min_boots} boot(s) "
            "per side)"
        ]
        lines += [f"  - {line}" for line in self.failures()]
        lines += [f"  - incomplete: {line}" for line in self.incomplete]
        lines += [
            f"  waived: {c.cell}: {c.outcome} by known issue: {c.waived_by}"
            for c in self.cells
            if c.waived_by
        ]
        lines += [f"  fixed: {c.cell}" for c in self.cells if c.outcome == Outcome.FIXED]
        lines += [
            f"  not run here: {c.cell}: {c.why}" for c in self.cells if c.outcome == Outcome.NOT_RUN
        ]
        lines += [f"  figure: {f.line()}" for f in self.figures]
        lines += [f"  note: {note}" for note in self.notes]
        return lines

    def to_json(self) -> str:
        data = {
            "passed": self.passed,
            "exit_code": self.exit_code,
            "candidate": asdict(self.candidate),
            "baseline": asdict(self.baseline),
            "policy": {**asdict(self.policy), "max_ratio": dict(self.policy.max_ratio)},
            "cells": [asdict(c) for c in self.cells],
            "figures": [
                asdict(f) | {"ratio": _finite(f.ratio), "over": f.over} for f in self.figures
            ],
            "failures": self.failures(),
            "incomplete": self.incomplete,
            "notes": self.notes,
        }
        return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)


def compare(
    results: Iterable[Result],
    *,
    candidate: Side,
    baseline: Side,
    policy: Policy,
    known_issues: Sequence[KnownIssue] = (),
    extra_figures: Mapping[str, Mapping[str, float]] | None = None,
    today: date | None = None,
) -> Comparison:
    """Judge a gate run's results of the required tiers. ``extra_figures``: per side, figures
    that are not a cell's (``image_bytes`` of each side's boot loader image)."""
    required = [r for r in results if r.side and r.tier in policy.required_tiers]
    cells: list[CellComparison] = []
    figures: list[FigureComparison] = []
    for key, of_cell in sorted(_by_cell(required).items()):
        cell = _judge_cell(key, of_cell, known_issues, today)
        cells.append(cell)
        if key[1] == BOOT_CHECK and cell.outcome in (Outcome.PASS, Outcome.FLAKY):
            figures += _figures(cell.cell, of_cell, policy)  # the boot cells' rounds: N boots
    for figure, max_ratio in sorted(policy.max_ratio.items()):
        values = {side: (extra_figures or {}).get(side, {}).get(figure) for side in SIDE_NAMES}
        if values["baseline"] is not None and values["candidate"] is not None:
            figures.append(FigureComparison(
                "image", figure, [values["baseline"]] * policy.min_boots,
                [values["candidate"]] * policy.min_boots, max_ratio,
            ))  # fmt: skip
    return Comparison(candidate, baseline, policy, cells, figures)


SIDE_NAMES = ("candidate", "baseline")
CellKey = tuple[str, str, str]  # target, check, channel ("" for none)


def _by_cell(results: Iterable[Result]) -> dict[CellKey, list[Result]]:
    cells: dict[CellKey, list[Result]] = {}
    for result in results:
        cells.setdefault((result.target, result.check, result.channel or ""), []).append(result)
    return cells


def _cell_name(key: CellKey) -> str:
    return " ".join(part for part in key if part)


def side_state(results: Sequence[Result]) -> tuple[SideState, str]:
    """One side's state from its results (every round, every attempt), and why."""
    if not results:
        return SideState.SKIPPED, "no result"
    rounds: dict[int, list[Result]] = {}
    for result in sorted(results, key=lambda r: r.stop):
        rounds.setdefault(result.round, []).append(result)
    last = [attempts[-1] for attempts in rounds.values()]
    failed = [r for r in last if r.failed and not r.incomplete]
    if failed:
        return SideState.FAIL, _why(failed[0])
    broken = [r for r in last if r.incomplete]
    if broken:
        return SideState.INCOMPLETE, f"round {broken[0].round}: {broken[0].incomplete}"
    skipped = [r for r in last if not r.ran]
    if len(skipped) == len(last):
        return SideState.SKIPPED, f"did not run: {skipped[0].skip_reason}"
    if skipped:
        return (
            SideState.INCOMPLETE,
            f"round {skipped[0].round} did not run: {skipped[0].skip_reason}",
        )
    retried = [a for attempts in rounds.values() for a in attempts[:-1] if a.failed]
    if any(not a.incomplete for a in retried):
        return SideState.FLAKY, f"round {retried[0].round} failed, then passed: {_why(retried[0])}"
    return SideState.PASS, ""


def _why(result: Result) -> str:
    phase = f" in phase {result.failed_phase}" if result.failed_phase else ""
    rules = f" rules {','.join(result.failed_rules)}" if result.failed_rules else ""
    line = result.first_message_line
    return f"{result.status}{phase}{rules}" + (f": {line}" if line else "")


def _judge_cell(
    key: CellKey,
    results: Sequence[Result],
    known_issues: Sequence[KnownIssue],
    today: date | None,
) -> CellComparison:
    sides = {side: [r for r in results if r.side == side] for side in SIDE_NAMES}
    candidate, candidate_why = side_state(sides["candidate"])
    one_sided = key[1] == REBASE_CHECK  # baseline → candidate: the update itself
    baseline, baseline_why = (None, "") if one_sided else side_state(sides["baseline"])
    outcome, why = _outcome(candidate, candidate_why, baseline, baseline_why)
    if candidate == baseline == SideState.SKIPPED and candidate_why == baseline_why:
        outcome, why = Outcome.NOT_RUN, candidate_why
    sample = results[0]
    cell = CellComparison(
        _cell_name(key), sample.platform, sample.tier, baseline, candidate, outcome, why
    )
    if outcome in BLOCKING:
        waiver = next(
            (
                issue for issue in known_issues
                if issue.is_issue and any(
                    issue.applies_to(r.platform, r.version, r.evidence, target=r.target,
                                     check=r.check, channel=r.channel, today=today)
                    for r in sides["candidate"]
                )
            ),
            None,
        )  # fmt: skip
        if waiver is not None:
            cell.waived_by = f"{waiver.summary} [{waiver.scope()}]" + (
                f" until {waiver.expires.isoformat()}" if waiver.expires else ""
            )
    return cell


def _outcome(
    candidate: SideState, candidate_why: str, baseline: SideState | None, baseline_why: str
) -> tuple[Outcome, str]:
    unjudged = (SideState.INCOMPLETE, SideState.SKIPPED)
    if candidate in unjudged:
        return Outcome.INCOMPLETE, f"candidate {candidate}: {candidate_why}"
    if baseline is None:  # one-sided: a failure is the candidate's alone
        return {
            SideState.PASS: (Outcome.PASS, ""),
            SideState.FLAKY: (Outcome.FLAKY, candidate_why),
        }.get(candidate, (Outcome.REGRESSION, candidate_why))
    if baseline in unjudged:
        return Outcome.INCOMPLETE, f"baseline {baseline}: {baseline_why}"
    bad = {SideState.FAIL}
    if candidate in bad:
        if baseline in bad:
            return Outcome.ALWAYSFAIL, f"candidate: {candidate_why}; baseline: {baseline_why}"
        return Outcome.REGRESSION, candidate_why
    if baseline in bad:
        return Outcome.FIXED, f"baseline: {baseline_why}"
    if candidate == SideState.FLAKY:
        return Outcome.FLAKY, candidate_why
    return Outcome.PASS, ""


def _figures(cell: str, results: Sequence[Result], policy: Policy) -> list[FigureComparison]:
    """Each budgeted figure of the cell: every passed round's value per side (a failed boot
    has no time to ready)."""
    comparisons = []
    for figure, max_ratio in sorted(policy.max_ratio.items()):
        values = {
            side: [
                r.figures[figure]
                for r in _final_attempts(results, side)
                if r.passed and figure in r.figures
            ]
            for side in SIDE_NAMES
        }
        if values["baseline"] or values["candidate"]:
            comparisons.append(
                FigureComparison(cell, figure, values["baseline"], values["candidate"], max_ratio)
            )
    return comparisons


def _final_attempts(results: Sequence[Result], side: str) -> list[Result]:
    rounds: dict[int, Result] = {}
    for result in sorted((r for r in results if r.side == side), key=lambda r: r.stop):
        rounds[result.round] = result
    return list(rounds.values())


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{_figure(median)} (1 boot)"
    return f"{_figure(median)} [{_figure(min(values))}–{_figure(max(values))}, {len(values)} boots]"


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"


def _finite(ratio: float | None) -> float | None:
    """JSON has no infinity: a baseline of 0 against a candidate above it is null there."""
    return None if ratio is None or ratio == float("inf") else ratio
