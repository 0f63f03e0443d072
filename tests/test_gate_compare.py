"""lab/report/compare.py: a gate run's results (candidate and baseline side by side) judged.
The real-guest proofs of each outcome are tests/test_gate_run.py's; these are the rules."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta

import pytest

from lab.evidence import Result
from lab.known_issues import KnownIssue
from lab.report.compare import (
    FAILED,
    INCOMPLETE,
    PASSED,
    Outcome,
    Policy,
    Side,
    SideState,
    compare,
    side_state,
)

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
POLICY = Policy(required_tiers=(1,), min_boots=3, max_ratio={"ready_s": 1.25})
CANDIDATE, BASELINE = Side("1.3", "c" * 64, "l" * 64), Side("1.2", "b" * 64, "l" * 64)
TAGS = {"candidate": CANDIDATE.tag, "baseline": BASELINE.tag}


def result(side: str, round_: int = 0, status: str = "passed", **changes: object) -> Result:
    base = Result(
        check="boot", target="kvm", platform="KVM", version=TAGS[side], evidence="profile",
        tier=1, status=status, message="", side=side, round=round_,
        stop=T0 + timedelta(minutes=round_),
        figures={"ready_s": 30.0} if status == "passed" else {},
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def both(status_candidate: str = "passed", status_baseline: str = "passed", **changes: object):
    return [
        result(side, n, status, **changes)
        for n in range(3)
        for side, status in (("baseline", status_baseline), ("candidate", status_candidate))
    ]


def judge(results: list[Result], **kwargs: object):
    kwargs.setdefault("policy", POLICY)
    return compare(results, candidate=CANDIDATE, baseline=BASELINE, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("candidate", "baseline", "outcome", "code"),
    [
        ("passed", "passed", Outcome.PASS, PASSED),
        ("failed", "passed", Outcome.REGRESSION, FAILED),
        ("broken", "failed", Outcome.ALWAYSFAIL, FAILED),
        ("passed", "failed", Outcome.FIXED, PASSED),
        ("skipped", "passed", Outcome.INCOMPLETE, INCOMPLETE),
        ("failed", "skipped", Outcome.INCOMPLETE, INCOMPLETE),
    ],
)
def test_the_outcome_of_a_cell_is_britneys(candidate, baseline, outcome, code):
    comparison = judge(both(candidate, baseline))
    [cell] = comparison.cells
    assert cell.outcome == outcome and comparison.exit_code == code, comparison.lines()


def test_a_regression_names_the_cell_and_what_failed():
    failed = result("candidate", 2, "failed", failed_phase="mount-os",
                    message="snapshot refused\nmore")  # fmt: skip
    results = [*both()[:-1], failed]
    comparison = judge(results)
    assert comparison.exit_code == FAILED
    assert comparison.failures()[0] == (
        "kvm boot: REGRESSION (failed in phase mount-os: snapshot refused)"
    )
    assert comparison.lines()[0].startswith("gate: FAILED: candidate 1.3 against baseline 1.2")


def test_a_waiver_covers_exactly_its_scope_and_not_after_it_expires():
    results = both("failed", "failed")
    waiver = KnownIssue(platform="KVM", summary="TCG clock", target="kvm", check="boot",
                        expires=date(2027, 1, 31), link="https://example.org/7")  # fmt: skip
    elsewhere = dataclasses.replace(waiver, target="vmware")
    waived = judge(results, known_issues=[elsewhere, waiver], today=date(2027, 1, 30))
    assert waived.exit_code == PASSED, waived.lines()
    assert waived.cells[0].outcome == Outcome.ALWAYSFAIL
    assert waived.lines()[1] == (
        "  waived: kvm boot: ALWAYSFAIL by known issue: TCG clock [KVM · target kvm · check "
        "boot] until 2027-01-31"
    )
    expired = judge(results, known_issues=[waiver], today=date(2027, 1, 31))
    assert expired.exit_code == FAILED and expired.cells[0].waived_by is None
    assert judge(results, known_issues=[elsewhere]).exit_code == FAILED
    note = dataclasses.replace(waiver, kind="note")  # a note waives nothing
    assert judge(results, known_issues=[note], today=date(2027, 1, 1)).exit_code == FAILED


def test_a_round_that_failed_then_passed_its_retry_is_flaky_and_blocks_unless_the_policy_says():
    retry = result("candidate", 1, "failed", stop=T0 - timedelta(minutes=5))
    results = [*both(), retry]
    comparison = judge(results)
    assert comparison.cells[0].outcome == Outcome.FLAKY and comparison.exit_code == FAILED
    lenient = judge(results, policy=dataclasses.replace(POLICY, flaky_is_pass=True))
    assert lenient.exit_code == PASSED


def test_an_infrastructure_failure_is_incomplete_and_a_passing_retry_clears_it():
    broken = result("baseline", 0, "broken", incomplete="libvirtd died", stop=T0 - timedelta(1))
    assert side_state([broken]) == (SideState.INCOMPLETE, "round 0: libvirtd died")
    comparison = judge([*both()[1:], broken])  # round 0 of the baseline: only the broken one
    assert comparison.exit_code == INCOMPLETE
    assert "incomplete: kvm boot" in "\n".join(comparison.lines())
    assert judge([*both(), broken]).exit_code == PASSED  # retried: the newer attempt passed


def test_a_figure_over_its_budget_fails_naming_both_medians_the_spread_and_the_budget():
    results = [
        dataclasses.replace(r, figures={"ready_s": (40.0 + r.round) if r.side == "candidate"
                                        else (30.0 + r.round)})
        for r in both()
    ]  # fmt: skip
    comparison = judge(results)
    assert comparison.exit_code == FAILED
    [line] = comparison.failures()
    assert line == (
        "kvm boot ready_s: candidate 41.00 [40.00–42.00, 3 boots] vs baseline "
        "31.00 [30.00–32.00, 3 boots]: ratio 1.32 (budget 1.25, over budget)"
    )
    within = judge(results, policy=dataclasses.replace(POLICY, max_ratio={"ready_s": 1.5}))
    assert within.exit_code == PASSED


def test_too_few_boots_cannot_be_judged():
    comparison = judge([r for r in both() if r.round < 2])
    assert comparison.exit_code == INCOMPLETE
    assert comparison.incomplete == [
        "kvm boot ready_s: 2 baseline and 2 candidate boot(s), 3 needed"
    ]


def test_a_rebase_cell_has_one_side_and_its_failure_is_a_regression():
    rebase = result("candidate", check="rebase", rebase_from="1.2", status="failed",
                    failed_rules=("R8",))  # fmt: skip
    comparison = judge([*both(), rebase])
    cells = {c.cell: c for c in comparison.cells}
    assert cells["kvm rebase"].baseline is None
    assert cells["kvm rebase"].outcome == Outcome.REGRESSION
    assert comparison.exit_code == FAILED


def test_the_image_bytes_come_from_outside_the_cells_and_the_verdict_is_json():
    policy = dataclasses.replace(POLICY, max_ratio={"image_bytes": 1.05})
    extra = {"candidate": {"image_bytes": 12e6}, "baseline": {"image_bytes": 11e6}}
    comparison = judge(both(), policy=policy, extra_figures=extra)
    assert comparison.exit_code == FAILED
    assert comparison.failures()[0].startswith("image image_bytes: candidate 12,000,000")
    data = json.loads(comparison.to_json())
    assert data["exit_code"] == FAILED and data["candidate"]["snapshot"] == "c" * 64
    assert data["figures"][0]["over"] is True
    assert data["figures"][0]["max_ratio"] == 1.05 and "budget" not in data["figures"][0]


def test_results_outside_a_gate_run_or_the_required_tiers_are_not_judged():
    outside = dataclasses.replace(result("candidate"), side=None)
    tier2 = dataclasses.replace(result("candidate"), tier=2)
    comparison = judge([outside, tier2])
    assert comparison.cells == [] and comparison.exit_code == INCOMPLETE


def test_a_cell_neither_side_could_run_here_is_not_run_and_does_not_block():
    skipped = [
        dataclasses.replace(r, message="Skipped: guestinfo needs VMware Tools")
        for r in both("skipped", "skipped", check="context", channel="guestinfo")
    ]
    comparison = judge([*both(), *skipped])
    cells = {c.cell: c for c in comparison.cells}
    assert cells["kvm context guestinfo"].outcome == Outcome.NOT_RUN
    assert comparison.exit_code == PASSED
    assert "  not run here: kvm context guestinfo: did not run: guestinfo needs VMware Tools" in (
        comparison.lines()
    )
    assert judge(skipped).exit_code == INCOMPLETE  # nothing at all was judged
    one_sided = [*both(), *skipped[1:], dataclasses.replace(skipped[0], status="passed")]
    assert judge(one_sided).exit_code == INCOMPLETE


def test_only_the_boot_cells_rounds_are_compared_as_figures():
    reboot = [dataclasses.replace(r, check="reboot") for r in both() if r.round == 0]
    comparison = judge([*both(), *reboot])
    assert {f.cell for f in comparison.figures} == {"kvm boot"}
    assert comparison.exit_code == PASSED
