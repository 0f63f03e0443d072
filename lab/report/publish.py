"""The report's wiring: allure-results directories in, the files a reader opens (or a verdict) out.

``write_report`` reads the results, builds the support table, writes it as Markdown and HTML and
generates the Allure report beside it; ``judge`` gives the release gate's verdict. Both take
plain data (paths, versions, planned cells): the command line (lab/cli/) turns matrix.yaml
into that data, so the report imports neither the matrix nor the drivers and can be rebuilt
from a directory of results alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.evidence import BOOT_CHECK, REBASE_CHECK, ResultsError, read_results
from lab.known_issues import KnownIssuesError, load_known_issues
from lab.report.allure_html import AllureError, generate_html
from lab.report.gate import GateVerdict, verdict
from lab.report.render import write_table
from lab.report.table import PlannedRebase, build_table

REPORT_ERRORS = (ResultsError, KnownIssuesError, AllureError)
"""What ``write_report`` and ``judge`` raise for bad input or a missing tool; each names it."""
GATED_CHECKS = (BOOT_CHECK, REBASE_CHECK)
"""The checks whose results the gate judges (contextualization is reported, not gated)."""


@dataclass(frozen=True)
class ReportPaths:
    """The files ``write_report`` wrote."""

    markdown: Path  # support-table.md
    html: Path  # support-table.html
    allure: Path  # allure-report/index.html


def write_report(
    results_dirs: Sequence[Path],
    out_dir: Path,
    *,
    versions: Sequence[str],
    known_issues_path: Path,
    planned: Iterable[tuple[str, str, str]] | None,
    planned_rebase: Iterable[PlannedRebase] | None = None,
) -> ReportPaths:
    """The support table of the ``boot`` check and the Allure report, written into ``out_dir``.

    ``results_dirs``: allure-results directories (CI shards), merged. ``planned``: the
    (target, platform, evidence) triples of matrix.yaml, so that a cell with no result says
    which planned targets did not report. ``planned_rebase``: the (target, platform, evidence,
    FROM, TO) rebase cells of matrix.yaml, for the rebase column. Raises one of
    ``REPORT_ERRORS``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results = read_results(results_dirs)
    issues = load_known_issues(known_issues_path)
    support = build_table(
        results,
        versions=versions,
        known_issues=issues,
        planned=planned,
        planned_rebase=planned_rebase,
        sources=results_dirs,
    )
    markdown, html = write_table(support, out_dir)
    allure = generate_html(results_dirs, out_dir / "allure-report")
    return ReportPaths(markdown, html, allure)


def judge(
    results_dirs: Sequence[Path],
    *,
    known_issues_path: Path,
    required_tiers: Collection[int],
    allow_known_issues: bool,
    planned: Iterable[tuple[str, str, int]],
    planned_rebase: Iterable[tuple[str, str, str, int]] = (),
) -> GateVerdict:
    """The release gate's verdict on the ``boot`` and ``rebase`` results of ``results_dirs``.

    ``planned``: the (target, version, tier) cells of matrix.yaml, ``planned_rebase`` its
    (target, FROM, TO, tier) rebase cells; one of a required tier without a result fails the
    gate. Raises one of ``REPORT_ERRORS``.
    """
    results = read_results(results_dirs)
    issues = load_known_issues(known_issues_path)
    return verdict(
        [result for result in results if result.check in GATED_CHECKS],
        required_tiers=required_tiers,
        allow_known_issues=allow_known_issues,
        known_issues=issues,
        planned=planned,
        planned_rebase=planned_rebase,
    )
