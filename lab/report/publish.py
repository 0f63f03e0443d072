"""The report's wiring: allure-results directories in, the files a reader opens (or a verdict) out.

``write_report`` reads the results, builds the support table, draws the plots, writes the table
as Markdown and HTML with the plots, and generates the Allure report beside it (the plots
attached, the Environment and Executor panels filled, the trend chart fed by Allure's history);
``judge`` gives the release gate's verdict. Both take plain data (paths, versions, planned
cells, the host's facts): the command line (lab/cli/) turns matrix.yaml and the host into that
data, so the report imports neither the matrix nor the drivers and can be rebuilt from a
directory of results alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab.evidence import BOOT_CHECK, REBASE_CHECK, Result, ResultsError, read_results
from lab.known_issues import KnownIssuesError, load_known_issues
from lab.report.allure_html import AllureError, Executor, generate_html, history_problem
from lab.report.gate import GateVerdict, verdict
from lab.report.render import write_table
from lab.report.table import PlannedRebase, build_table

if TYPE_CHECKING:
    from lab.report.plots import Plot, TrendPoint

REPORT_ERRORS = (ResultsError, KnownIssuesError, AllureError)
"""What ``write_report`` and ``judge`` raise for bad input or a missing tool; each names it."""
GATED_CHECKS = (BOOT_CHECK, REBASE_CHECK)
"""The checks whose results the gate judges (contextualization is reported, not gated)."""
PLOTS_DIR = "plots"
"""The plots' directory in the report's (PNG and SVG; the pages link them relatively)."""
ALLURE_HISTORY = "allure-history.jsonl"
"""Allure's history, in the reports directory beside the lab's own (history.sqlite): a run
cleans only reports/allure-results and the generator writes only reports/allure-report, so
it outlives both and the trend chart spans the nightlies."""


@dataclass(frozen=True)
class ReportPaths:
    """The files ``write_report`` wrote."""

    markdown: Path  # support-table.md
    html: Path  # support-table.html
    allure: Path  # allure-report/index.html
    plots: tuple[Plot, ...] = ()  # those drawn are under plots/
    notes: tuple[str, ...] = ()  # what the reader should know (a history left out, and why)


def write_report(
    results_dirs: Sequence[Path],
    out_dir: Path,
    *,
    versions: Sequence[str],
    known_issues_path: Path,
    planned: Iterable[tuple[str, str, str]] | None,
    planned_rebase: Iterable[PlannedRebase] | None = None,
    environment: Mapping[str, str] | None = None,
    executor: Executor | None = None,
    history: Path | None = None,
    trends: Mapping[str, Sequence[TrendPoint]] | None = None,
) -> ReportPaths:
    """The support table of the ``boot`` check, its plots and the Allure report, written into
    ``out_dir``.

    ``results_dirs``: allure-results directories (CI shards), merged. ``planned``: the
    (target, platform, evidence) triples of matrix.yaml, so that a cell with no result says
    which planned targets did not report. ``planned_rebase``: the (target, platform, evidence,
    FROM, TO) rebase cells of matrix.yaml, for the rebase column. ``environment``: the host's
    facts for Allure's Environment panel, by name (the accelerators come from the results);
    ``executor``: its Executor panel; ``history``: Allure's history file (ALLURE_HISTORY under
    the reports), None for none. Raises one of ``REPORT_ERRORS``.
    """
    # matplotlib takes a second to import: only a report pays for it, not every command
    from lab.report.plots import result_plots, trend_plot

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
    plots = result_plots(results, out_dir / PLOTS_DIR, versions=versions)
    if trends:  # the tier-1 boot cells over the last nightlies (lab.history, through the CLI)
        plots = [*plots, trend_plot(trends, out_dir / PLOTS_DIR)]
    markdown, html = write_table(support, out_dir, plots)
    notes = []
    if history is not None and (problem := history_problem(history)):
        notes.append(f"the Allure report has no trend this time: {problem}; move it away to "
                     "begin a new history")  # fmt: skip
        history = None
    allure = generate_html(
        results_dirs,
        out_dir / "allure-report",
        environment=report_environment(environment or {}, results),
        executor=executor,
        attachments=[(plot.title, plot.png) for plot in plots if plot.png is not None],
        history=history,
    )
    return ReportPaths(markdown, html, allure, tuple(plots), tuple(notes))


def report_environment(facts: Mapping[str, str], results: Iterable[Result]) -> dict[str, str]:
    """Allure's Environment panel: the host's ``facts``, and the accelerators that ran the
    results' guests (their ``accel`` labels: what ran, not what was asked for) as
    ``accelerator``."""
    environment = dict(facts)
    ran = Counter(result.accel for result in results if result.accel)
    if ran:
        environment["accelerator"] = ", ".join(
            f"{accel} ({count} result{'s' if count > 1 else ''})"
            for accel, count in sorted(ran.items())
        )
    return environment


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
