"""The report's plots, drawn with matplotlib's Agg backend as PNG and SVG (reports/plots/).

From a run's results (``result_plots``, the newest ``boot`` result of each cell):
- ``ready_plot``: the time to `ready`, split by phase (stacked bars);
- ``fetched_plot``: the bytes fetched from the repository per version (bars per target).

From plain data that other parts of the lab compute:
- ``trend_plot``: a figure of each cell over the last nightlies (the history gives the points);
- ``comparison_plot``: a candidate against its baseline per figure, with the budget drawn (the
  gate's comparison, lab/report/compare.py, gives the boots).

A plot without data is not drawn: its ``Plot`` says why (``missing``), the page prints that
instead of an empty axis, and the files an earlier run left under its name are removed. The
same data gives byte-identical files: no date in the SVG, a fixed salt for its ids, matplotlib's
own font, and text kept as text (an SVG's labels can be searched and read out).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.typing import RcKeyType

from lab.evidence import BOOT_CHECK, PHASE_FIGURE, PLATFORMS, Result, latest_results
from lab.report.compare import FigureComparison

READY_PLOT, FETCHED_PLOT = "ready-by-phase", "fetched-bytes"
COMPARISON_PLOT = "candidate-vs-baseline"
NO_BOOT_RESULTS = "no boot results"
STYLE: dict[RcKeyType, Any] = {
    "svg.hashsalt": "ucvm-lab",  # the SVG's ids, otherwise random per render
    "svg.fonttype": "none",  # text stays text
    "font.family": "DejaVu Sans",  # shipped with matplotlib: the same glyphs on every host
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
DPI = 110
PALETTE = ("#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb", "#e52592",
           "#f9ab00", "#3949ab", "#7cb342", "#8d6e63", "#5f6368")  # fmt: skip
PASSED, FAILED, OTHER, BUDGET = "#188038", "#d93025", "#9aa0a6", "#b06000"
ALT_ITEMS = 12  # the alt text names this many bars or cells, then counts the rest
T = TypeVar("T")


@dataclass(frozen=True)
class Plot:
    """One plot: its files (``svg`` and ``png``), or, when it was not drawn, why not."""

    name: str  # the files' stem: plots/NAME.svg, plots/NAME.png
    title: str
    alt: str  # what it shows, in words (the image's alt text)
    svg: Path | None = None
    png: Path | None = None
    missing: str = ""  # why it was not drawn, e.g. "no boot results"

    @property
    def drawn(self) -> bool:
        return self.svg is not None


# --- from a run's results ------------------------------------------------------------------------


def result_plots(
    results: Iterable[Result], out_dir: Path, *, versions: Sequence[str]
) -> list[Plot]:
    """The plots of a run's results, into ``out_dir``; ``versions`` orders the versions."""
    boots = newest_boots(results)
    return [ready_plot(boots, out_dir, versions=versions), fetched_plot(boots, out_dir, versions)]


def newest_boots(results: Iterable[Result]) -> list[Result]:
    """The newest ``boot`` result of each cell (a rerun replaces the run before it)."""
    return latest_results(result for result in results if result.check == BOOT_CHECK)


def ready_plot(boots: Sequence[Result], out_dir: Path, *, versions: Sequence[str] = ()) -> Plot:
    """Stacked bars: per cell, the guest seconds of each phase, and the host's seconds beyond
    them (QEMU's start, the firmware) up to the host's time to `ready`."""
    title = "Time to ready, by phase"
    timed = sorted((r for r in boots if "guest_ready_s" in r.figures), key=cell_order(versions))
    if not timed:
        missing = "no boot result has a time to ready" if boots else NO_BOOT_RESULTS
        return not_drawn(out_dir, READY_PLOT, title, missing)
    phases = phase_order(timed)

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        rows = range(len(timed))
        left = [0.0] * len(timed)
        for i, phase in enumerate(phases):
            widths = [r.figures.get(PHASE_FIGURE + phase, 0.0) for r in timed]
            ax.barh(rows, widths, 0.6, left=left, color=color(i), label=phase)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ready = [r.figures.get("ready_s", 0.0) for r in timed]
        host = [max(r - guest, 0.0) for r, guest in zip(ready, left, strict=True)]
        if any(host):
            ax.barh(rows, host, 0.6, left=left, color="#dadce0", hatch="///", edgecolor=OTHER,
                    linewidth=0, label="host only (QEMU, firmware)")  # fmt: skip
        for row, result, stacked in zip(rows, timed, left, strict=True):
            end = max(stacked, total_s(result))  # after the bar, also when the host was faster
            ax.annotate(f" {total_s(result):.1f} s", (end, row), va="center")
        ax.set_yticks(list(rows), [cell_label(r) for r in timed])
        ax.invert_yaxis()
        ax.set_xlabel("seconds to ready: the guest's clock per phase, the host's in total")
        fig.legend(loc="outside lower center", ncols=min(len(phases) + 1, 6), frameon=False,
                   fontsize=8)  # fmt: skip
        ax.margins(x=0.12)

    alt = f"{title} (newest boot per cell, seconds): " + summary(
        f"{cell_label(r)} {total_s(r):.1f} s" for r in timed
    )
    return render(draw, (8.0, 1.4 + 0.34 * len(timed)), out_dir, READY_PLOT, title, alt)


def fetched_plot(boots: Sequence[Result], out_dir: Path, versions: Sequence[str] = ()) -> Plot:
    """Bars per target, grouped by version: the bytes the guest fetched by `ready`."""
    title = "Bytes fetched per version"
    measured = sorted((r for r in boots if "fetched_bytes" in r.figures), key=cell_order(versions))
    if not measured:
        missing = "no boot result has a count of fetched bytes" if boots else NO_BOOT_RESULTS
        return not_drawn(out_dir, FETCHED_PLOT, title, missing)
    shown = unique(r.version for r in measured)
    groups = [v for v in versions if v in shown] + [v for v in shown if v not in versions]
    targets = unique(r.target for r in measured)
    fetched = {(r.target, r.version): r.figures["fetched_bytes"] / 1e6 for r in measured}
    width = 0.8 / len(targets)

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        for j, target in enumerate(targets):
            bars = [(i, fetched[target, v]) for i, v in enumerate(groups) if (target, v) in fetched]
            xs = [i - 0.4 + width * (j + 0.5) for i, _ in bars]
            ax.bar(xs, [mb for _, mb in bars], width * 0.9, color=color(j), label=target)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_xlabel("OS version")
        ax.set_ylabel("MB fetched by ready (newest boot per cell)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)

    alt = f"{title} (MB, newest boot per cell): " + summary(
        f"{r.version} {r.target} {fetched[r.target, r.version]:.1f} MB"
        for v in groups
        for r in measured
        if r.version == v
    )
    return render(draw, (8.0, 3.6), out_dir, FETCHED_PLOT, title, alt)


def total_s(result: Result) -> float:
    """The host's time to `ready`, or the guest's when the host's is not known."""
    return result.figures.get("ready_s", result.figures["guest_ready_s"])


def cell_label(result: Result) -> str:
    accel = f" · {result.accel}" if result.accel else ""
    failed = " (failed)" if result.failed else ""
    return f"{result.target} · {result.version}{accel}{failed}"


def cell_order(versions: Sequence[str]) -> Callable[[Result], tuple[int, str, int, str]]:
    """Sort key: the table's platform order, the target, then the order of ``versions``."""

    def key(result: Result) -> tuple[int, str, int, str]:
        platform = PLATFORMS.index(result.platform) if result.platform in PLATFORMS else 99
        version = versions.index(result.version) if result.version in versions else 99
        return platform, result.target, version, result.version

    return key


def phase_order(results: Sequence[Result]) -> list[str]:
    """Every phase of these results, in boot order: a phase only some boots have (kexec,
    rebase) goes after the phase before it in the first boot that has it."""
    order: list[str] = []
    for result in results:
        before = -1
        for key in result.figures:
            if not key.startswith(PHASE_FIGURE):
                continue
            phase = key.removeprefix(PHASE_FIGURE)
            if phase not in order:
                order.insert(before + 1, phase)
            before = order.index(phase)
    return order


# --- from plain data: the trend over nightlies ---------------------------------------------------

TrendPoint = tuple[str | datetime, float | None, str]
"""(the run: its label or its time, the figure's value or None when it has none, its status)."""


def trend_plot(
    series: Mapping[str, Sequence[TrendPoint]],
    out_dir: Path,
    *,
    figure: str = "ready_s",
    name: str | None = None,
) -> Plot:
    """Small multiples, one per cell: ``figure`` over the runs, a marker per run by status.

    ``series``: per cell (its label, e.g. "kvm · newest · boot") its points, oldest first, each
    (run, value, status): the run's label or time (times are sorted, labels kept in the order
    given), the figure's value (None: the run has none, e.g. a boot that never got `ready`;
    its marker sits on the axis) and the run's status (passed; failed or broken; anything else,
    e.g. skipped or incomplete, is grey). The plot's files are ``trend-FIGURE`` by default.
    """
    name = name or f"trend-{figure}"
    title = f"Trend of {figure}, per cell"
    cells = [(cell, list(points)) for cell, points in series.items() if points]
    if not cells:
        return not_drawn(out_dir, name, title, "no history yet")
    runs = run_order([run for _, points in cells for run, _, _ in points])
    column = {run: i for i, run in enumerate(runs)}
    unit, scale = figure_unit(figure)
    ncols = 1 if len(cells) <= 4 else 2
    nrows = math.ceil(len(cells) / ncols)

    def draw(fig: Figure) -> None:
        axes = list(fig.subplots(nrows, ncols, sharex=True, squeeze=False).flat)
        for ax, (cell, points) in zip(axes, cells, strict=False):
            xs = [column[run] for run, _, _ in points]
            ys = [math.nan if v is None else v / scale for _, v, _ in points]
            ax.plot(xs, ys, color=OTHER, linewidth=1, zorder=1)
            for x, y, (_, _, status) in zip(xs, ys, points, strict=True):
                trend_marker(ax, x, y, status)
            ax.set_title(cell, loc="left", fontsize=9)
            ax.set_ylim(bottom=0)
            ax.margins(y=0.15)
        for ax in axes[len(cells) :]:  # the grid's cells left over
            ax.set_visible(False)
        step = max(1, math.ceil(len(runs) / 12))
        for i, ax in enumerate(axes[: len(cells)]):
            ax.set_xticks(range(0, len(runs), step), [run_label(r) for r in runs[::step]])
            lowest = i + ncols >= len(cells)  # no cell below it in its column: it names the runs
            ax.tick_params(axis="x", labelrotation=30, labelsize=7, labelbottom=lowest)
        fig.supylabel(f"{figure} ({unit})" if unit else figure)
        fig.legend(handles=status_legend(), loc="outside lower center", ncols=3, frameon=False)

    alt = f"{title} over {len(runs)} runs: " + summary(
        f"{cell} last {value_text(points[-1][1], unit, scale)} ({points[-1][2]})"
        for cell, points in cells
    )
    width = 8.0 if ncols == 1 else 11.0
    return render(draw, (width, 1.0 + 1.6 * nrows), out_dir, name, title, alt)


STATUS_MARKERS = {"passed": (PASSED, "o"), "failed": (FAILED, "X"), "broken": (FAILED, "X")}


def trend_marker(ax: Axes, x: int, y: float, status: str) -> None:
    """A run's marker: on its value, or on the axis when it has none."""
    colour, marker = STATUS_MARKERS.get(status, (OTHER, "o"))
    if math.isnan(y):
        ax.scatter([x], [0.04], transform=ax.get_xaxis_transform(), color=colour, marker=marker,
                   s=30, zorder=2, clip_on=False)  # fmt: skip
    else:
        ax.scatter([x], [y], color=colour, marker=marker, s=30, zorder=2)


def status_legend() -> list[Line2D]:
    def handle(colour: str, marker: str, label: str) -> Line2D:
        return Line2D([], [], color=colour, marker=marker, linestyle="", label=label)

    return [
        handle(PASSED, "o", "passed"),
        handle(FAILED, "X", "failed (on the axis: no value)"),
        handle(OTHER, "o", "skipped, incomplete"),
    ]


def run_order(runs: Sequence[str | datetime]) -> list[str | datetime]:
    """The runs once each: sorted when all are times, else in the order first given."""
    once = unique(runs)
    if all(isinstance(run, datetime) for run in once):
        return sorted(once, key=lambda run: run.timestamp() if isinstance(run, datetime) else 0)
    return once


def run_label(run: str | datetime) -> str:
    return f"{run:%Y-%m-%d %H:%M}" if isinstance(run, datetime) else run


# --- from the gate's comparison: candidate against baseline --------------------------------------


def comparison_text(row: FigureComparison) -> str:
    """The alt text of one cell's figure: both sides' medians and spread, and the budget."""
    unit, scale = figure_unit(row.figure)

    def side(name: str, values: Sequence[float], median: float | None) -> str:
        if median is None:
            return f"no {name} value"
        spread = f"{min(values) / scale:.3g}–{max(values) / scale:.3g}"
        return f"{name} {value_text(median, unit, scale)} ({spread}, {len(values)} boots)"

    judged = "over budget" if row.over else "within budget"
    verdict = "not judged" if row.ratio is None else judged  # a side has no value
    budget = "" if row.budget is None else f" {value_text(row.budget, unit, scale)}"
    return (
        f"{row.cell} {row.figure}: "
        f"{side('baseline', row.baseline, row.baseline_median)}, "
        f"{side('candidate', row.candidate, row.candidate_median)}; "
        f"budget ×{row.max_ratio:g}{budget}: {verdict}"
    )


def comparison_plot(
    rows: Sequence[FigureComparison],
    out_dir: Path,
    *,
    name: str = COMPARISON_PLOT,
    title: str = "Candidate against baseline",
) -> Plot:
    """One panel per figure, a row per cell: each side's boots (dots), their spread (a line
    from the least to the most) and their median (a diamond), and the budget (a dashed line at
    the baseline's median × the ratio). A candidate over budget is red. ``rows``: the gate's
    figures (lab/report/compare.py ``Comparison.figures``), in the order given."""
    if not rows:
        return not_drawn(out_dir, name, title, "no candidate and baseline figures")
    figures = unique(row.figure for row in rows)
    panels = [[row for row in rows if row.figure == figure] for figure in figures]

    def draw(fig: Figure) -> None:
        heights = [len(panel) + 1 for panel in panels]
        axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
        for ax, figure, panel in zip(axes, figures, panels, strict=True):
            comparison_panel(ax, figure, panel)
        fig.legend(handles=comparison_legend(), loc="outside lower center", ncols=4, frameon=False)

    alt = f"{title}: " + summary(comparison_text(row) for row in rows)
    height = 1.0 + sum(0.5 + 0.55 * len(panel) for panel in panels)
    return render(draw, (8.0, height), out_dir, name, title, alt)


def comparison_panel(ax: Axes, figure: str, panel: Sequence[FigureComparison]) -> None:
    unit, scale = figure_unit(figure)
    for i, row in enumerate(panel):
        sides = ((i - 0.18, row.baseline, OTHER), (i + 0.18, row.candidate, side_colour(row)))
        for y, values, colour in sides:
            if not values:
                continue
            scaled = [v / scale for v in values]
            ax.hlines(y, min(scaled), max(scaled), color=colour, linewidth=2)
            ax.scatter(scaled, [y] * len(scaled), color=colour, s=10, alpha=0.6)
            ax.scatter([statistics.median(scaled)], [y], color=colour, marker="D", s=36, zorder=3)
        if row.budget is not None:
            ax.vlines(row.budget / scale, i - 0.42, i + 0.42, color=BUDGET, linestyles="--")
        ratio = ratio_text(row)
        ax.annotate(ratio, (1.01, i), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.set_yticks(range(len(panel)), [row.cell for row in panel])
    ax.set_ylim(len(panel) - 0.5, -0.5)
    tops = [v for row in panel for v in (*row.baseline, *row.candidate, row.budget or 0.0)]
    ax.set_xlim(0, max(tops, default=0.0) / scale * 1.08 or 1.0)
    ax.set_xlabel(f"{figure} ({unit})" if unit else figure)


def side_colour(row: FigureComparison) -> str:
    return FAILED if row.over else PALETTE[0]


def ratio_text(row: FigureComparison) -> str:
    """`` ×1.12 of ×1.25``: the medians' ratio against the budget ratio."""
    base, cand = row.baseline_median, row.candidate_median
    if base is None or cand is None:
        return f" no {'baseline' if base is None else 'candidate'} value"
    if base == 0:
        return f" budget ×{row.max_ratio:g}"
    return f" ×{cand / base:.2f} of ×{row.max_ratio:g}"


def comparison_legend() -> list[Line2D]:
    return [
        Line2D([], [], color=OTHER, marker="D", label="baseline (median, boots)"),
        Line2D([], [], color=PALETTE[0], marker="D", label="candidate"),
        Line2D([], [], color=FAILED, marker="D", label="candidate over budget"),
        Line2D([], [], color=BUDGET, linestyle="--", label="budget: baseline median × ratio"),
    ]


# --- drawing and writing -------------------------------------------------------------------------


def render(
    draw: Callable[[Figure], None],
    size: tuple[float, float],
    out_dir: Path,
    name: str,
    title: str,
    alt: str,
) -> Plot:
    """Draw a figure of ``size`` inches and write ``out_dir``/NAME.svg and NAME.png."""
    stem = file_stem(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    svg, png = out_dir / f"{stem}.svg", out_dir / f"{stem}.png"
    with rc_context(STYLE):  # read when drawing and when saving
        fig = Figure(figsize=size, layout="constrained")
        FigureCanvasAgg(fig)
        fig.suptitle(title, x=0.01, ha="left", fontsize=11)
        draw(fig)
        fig.savefig(svg, format="svg", metadata={"Date": None})
        fig.savefig(png, format="png", dpi=DPI)
    return Plot(stem, title, alt, svg, png)


def not_drawn(out_dir: Path, name: str, title: str, missing: str) -> Plot:
    """No data: no plot, and none left over from an earlier run under this name."""
    stem = file_stem(name)
    for suffix in (".svg", ".png"):
        (out_dir / f"{stem}{suffix}").unlink(missing_ok=True)
    return Plot(stem, title, f"{title}: {missing}", missing=missing)


def file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "plot"


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def figure_unit(figure: str) -> tuple[str, float]:
    """(unit, divisor) of a figure by its name: ``*_s`` seconds, ``*_bytes`` megabytes."""
    if figure.endswith("_s"):
        return "s", 1.0
    if figure.endswith("_bytes"):
        return "MB", 1e6
    return "", 1.0


def value_text(value: float | None, unit: str, scale: float) -> str:
    if value is None:
        return "no value"
    return f"{value / scale:.3g} {unit}".rstrip()


def summary(items: Iterable[str]) -> str:
    """Items joined for an alt text: the first ALT_ITEMS, then how many more."""
    listed = list(items)
    more = f"; and {len(listed) - ALT_ITEMS} more" if len(listed) > ALT_ITEMS else ""
    return "; ".join(listed[:ALT_ITEMS]) + more


def unique(items: Iterable[T]) -> list[T]:
    """Each item once, in the order first given."""
    return list(dict.fromkeys(items))
