"""lab.report.plots: the report's plots, from results and from plain data."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lab.evidence import Result
from lab.report import plots
from lab.report.compare import FigureComparison

T0 = datetime(2025, 11, 24, 12, 0, tzinfo=UTC)
PHASES = {"start": 0.5, "modules": 1.2, "network": 2.0, "scratch": 0.8, "repo": 1.0, "ready": 18.0}


def boot(
    target: str = "kvm",
    version: str = "newest",
    *,
    ready_s: float = 28.0,
    fetched: float | None = 9.4e6,
    stop: datetime = T0,
    **changes: object,
) -> Result:
    """A boot result with the figures lab.evidence.boot_figures gives a boot that got ready."""
    figures = {f"phase_s.{name}": seconds for name, seconds in PHASES.items()}
    figures |= {"guest_ready_s": sum(PHASES.values()), "ready_s": ready_s}
    if fetched is not None:
        figures["fetched_bytes"] = fetched
    platform = {"kvm": "KVM", "vmware": "VMware", "virtualbox": "VirtualBox"}[target]
    result = Result(
        check="boot", target=target, platform=platform, version=version, evidence="profile",
        tier=1, status="passed", message="", stop=stop, accel="tcg", figures=figures,
    )  # fmt: skip
    return dataclasses.replace(result, **changes)  # type: ignore[arg-type]


def cells() -> list[Result]:
    return [
        boot("kvm", ready_s=50.0, stop=T0 - timedelta(hours=1)),  # rerun below: left out
        boot("kvm", ready_s=28.0),
        boot("kvm", "previous", ready_s=26.0, fetched=8.1e6),
        boot("vmware", ready_s=30.5, fetched=9.9e6, status="failed"),
        boot("virtualbox", ready_s=31.0, fetched=None),
    ]


def test_ready_plot_stacks_the_phases_of_the_newest_boot_per_cell(tmp_path: Path):
    ready, _ = plots.result_plots(cells(), tmp_path, versions=["newest", "previous"])
    assert ready.drawn and ready.svg == tmp_path / "ready-by-phase.svg"
    assert ready.png is not None and ready.png.read_bytes().startswith(b"\x89PNG")
    # the table's platform order (VirtualBox, VMware, KVM), then the versions' order
    assert ready.alt == (
        "Time to ready, by phase (newest boot per cell, seconds): virtualbox · newest · tcg "
        "31.0 s; vmware · newest · tcg (failed) 30.5 s; kvm · newest · tcg 28.0 s; "
        "kvm · previous · tcg 26.0 s"
    )
    svg = ready.svg.read_text()
    assert all(f">{phase}<" in svg or f" {phase}<" in svg for phase in ("network", "repo"))
    assert "50.0 s" not in svg and "28.0 s" in svg  # the rerun replaced the older boot


def test_fetched_plot_groups_the_targets_by_version(tmp_path: Path):
    _, fetched = plots.result_plots(cells(), tmp_path, versions=["newest", "previous"])
    assert fetched.drawn
    assert fetched.alt == (
        "Bytes fetched per version (MB, newest boot per cell): newest vmware 9.9 MB; "
        "newest kvm 9.4 MB; previous kvm 8.1 MB"
    )  # virtualbox has no count of fetched bytes: no bar


def test_no_plot_for_data_that_does_not_exist_and_none_left_from_before(tmp_path: Path):
    drawn = plots.result_plots(cells(), tmp_path, versions=["newest"])
    assert all(plot.drawn for plot in drawn) and len(list(tmp_path.iterdir())) == 4
    context = dataclasses.replace(boot(), check="context", channel="nocloud")
    for results in ([], [context]):
        ready, fetched = plots.result_plots(results, tmp_path, versions=["newest"])
        assert (ready.drawn, ready.missing, ready.svg) == (False, plots.NO_BOOT_RESULTS, None)
        assert (fetched.drawn, fetched.missing) == (False, plots.NO_BOOT_RESULTS)
        assert list(tmp_path.iterdir()) == []  # the earlier run's files are gone
    never_ready = dataclasses.replace(boot(), figures={"phase_s.start": 0.5}, status="failed")
    ready, fetched = plots.result_plots([never_ready], tmp_path, versions=["newest"])
    assert ready.missing == "no boot result has a time to ready"
    assert fetched.missing == "no boot result has a count of fetched bytes"
    assert ready.alt == "Time to ready, by phase: no boot result has a time to ready"


def test_two_renders_of_the_same_data_are_byte_identical(tmp_path: Path):
    first = plots.result_plots(cells(), tmp_path / "a", versions=["newest", "previous"])
    again = plots.result_plots(cells(), tmp_path / "b", versions=["newest", "previous"])
    for one, other in zip(first, again, strict=True):
        assert one.svg and other.svg and one.png and other.png
        assert one.svg.read_bytes() == other.svg.read_bytes()
        assert one.png.read_bytes() == other.png.read_bytes()
        assert "<dc:date>" not in one.svg.read_text()
    changed = [*cells()[:-1], boot("virtualbox", ready_s=31.5, fetched=None)]
    ready = plots.result_plots(changed, tmp_path / "c", versions=["newest", "previous"])[0]
    assert ready.svg and first[0].svg
    assert ready.svg.read_bytes() != first[0].svg.read_bytes()  # the comparison can fail


def test_phases_only_some_boots_have_go_after_the_phase_before_them():
    kexec = {"phase_s.start": 1.0, "phase_s.scratch": 1.0, "phase_s.kexec": 2.0}
    kexec |= {"phase_s.repo": 1.0, "phase_s.ready": 5.0, "guest_ready_s": 10.0}
    two_phase = dataclasses.replace(boot(), figures=kexec)
    assert plots.phase_order([boot(), two_phase]) == [
        "start", "modules", "network", "scratch", "kexec", "repo", "ready",
    ]  # fmt: skip


def test_the_trend_takes_plain_data_and_marks_runs_without_a_value(tmp_path: Path):
    days = [T0 + timedelta(days=i) for i in range(3)]
    series: dict[str, list[plots.TrendPoint]] = {
        "kvm · newest · boot": [(days[2], 29.0, "passed"), (days[0], 28.0, "passed")],
        "vmware · newest · boot": [
            (days[0], 30.0, "passed"),
            (days[1], None, "failed"),
            (days[2], 31.0, "broken"),
        ],
        "ec2 · newest · boot": [],  # no run: no panel
    }
    plot = plots.trend_plot(series, tmp_path)
    assert plot.drawn and plot.svg == tmp_path / "trend-ready_s.svg"
    assert plot.alt == (
        "Trend of ready_s, per cell over 3 runs: kvm · newest · boot last 28 s (passed); "
        "vmware · newest · boot last 31 s (broken)"
    )
    svg = plot.svg.read_text()
    assert "vmware · newest · boot" in svg and "ec2 · newest" not in svg
    assert "2025-11-24 12:00" in svg  # the runs' times name the axis
    fetched = plots.trend_plot({"kvm": [("run 1", 9.4e6, "passed")]}, tmp_path,
                               figure="fetched_bytes")  # fmt: skip
    assert fetched.name == "trend-fetched_bytes" and "9.4 MB" in fetched.alt
    empty = plots.trend_plot({"kvm": []}, tmp_path)
    assert (empty.drawn, empty.missing) == (False, "no history yet")
    assert not (tmp_path / "trend-ready_s.svg").exists()


def test_runs_are_sorted_by_time_and_labels_kept_in_the_order_given():
    days = [T0 + timedelta(days=i) for i in range(3)]
    assert plots.run_order([days[2], days[0], days[1], days[0]]) == days
    assert plots.run_order(["n-3", "n-1", "n-2", "n-1"]) == ["n-3", "n-1", "n-2"]


def test_candidate_against_baseline_draws_the_budget_at_the_baseline_median_times_ratio(
    tmp_path: Path,
):
    rows = [
        FigureComparison("kvm boot", "ready_s", [28.0, 30.0, 29.0], [31.0, 30.0, 36.5], 1.25),
        FigureComparison("vmware boot", "ready_s", [30.0, 29.5, 31.0], [41.2, 39.8, 44.0], 1.25),
        FigureComparison("kvm boot", "fetched_bytes", [9.4e6, 9.4e6], [], 1.10),
    ]
    kvm, vmware, fetched = rows
    assert (kvm.baseline_median, kvm.candidate_median, kvm.budget) == (29.0, 31.0, 36.25)
    assert (kvm.over, vmware.over, fetched.over) == (False, True, False)
    assert fetched.budget == pytest.approx(9.4e6 * 1.10) and fetched.ratio is None
    assert plots.comparison_text(vmware) == (
        "vmware boot ready_s: baseline 30 s (29.5–31, 3 boots), candidate 41.2 s (39.8–44, "
        "3 boots); budget ×1.25 37.5 s: over budget"
    )
    assert plots.ratio_text(vmware) == " ×1.37 of ×1.25"
    assert plots.ratio_text(fetched) == " no candidate value"
    plot = plots.comparison_plot(rows, tmp_path)
    assert plot.drawn and plot.svg == tmp_path / "candidate-vs-baseline.svg"
    assert plot.alt.startswith("Candidate against baseline: kvm boot ready_s: baseline 29 s")
    assert "no candidate value; budget ×1.1 10.3 MB: not judged" in plot.alt
    svg = plot.svg.read_text()
    assert "×1.37 of ×1.25" in svg and "fetched_bytes (MB)" in svg
    empty = plots.comparison_plot([], tmp_path)
    assert not empty.drawn and not (tmp_path / "candidate-vs-baseline.svg").exists()


def test_a_long_alt_text_names_the_first_items_and_counts_the_rest():
    many = [f"cell {i}" for i in range(plots.ALT_ITEMS + 3)]
    assert plots.summary(many).endswith("; cell 11; and 3 more")
    assert plots.file_stem("trend of ready_s/../x") == "trend-of-ready_s-..-x"
