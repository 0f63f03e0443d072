"""lab.report: support table, known issues, gate, Allure HTML report."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lab.cli import write_report
from lab.evidence import PLATFORMS, Result, ResultsError, read_results
from lab.known_issues import KnownIssue, KnownIssuesError, load_known_issues
from lab.report import publish
from lab.report.allure_html import AllureError, Executor, executor_from_env, generate_html
from lab.report.gate import verdict
from lab.report.render import render_html, render_markdown, write_table
from lab.report.table import (
    FAIL,
    KNOWN_ISSUE,
    NO_CONTEXT_RESULT,
    NO_TARGET,
    PARTIAL,
    PASS,
    UNKNOWN,
    build_table,
)
from lab.targets.registry import load_matrix

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "allure-results-sample"
T0 = datetime(2025, 11, 24, 12, 0, tzinfo=UTC)


def make_result(**changes: object) -> Result:
    base = Result(
        check="boot",
        target="kvm",
        platform="KVM",
        version="newest",
        evidence="profile",
        tier=1,
        status="passed",
        message="",
        stop=T0,
        accel="tcg",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def table_of(results: list[Result], **kwargs: object):
    kwargs.setdefault("versions", ["newest"])
    kwargs.setdefault("known_issues", [])
    return build_table(results, **kwargs)  # type: ignore[arg-type]


def footnote_text(table, number: int) -> str:
    return next(note.text for note in table.footnotes if note.number == number)


def cell_notes(table, platform: str, evidence: str = "profile") -> list[str]:
    cell = table.cell(platform, "newest", evidence)
    return [footnote_text(table, number) for number in cell.notes]


@pytest.fixture(scope="module")
def sample_results() -> list[Result]:
    return read_results([SAMPLE])


@pytest.fixture(scope="module")
def known() -> list[KnownIssue]:
    return load_known_issues(REPO / "known-issues.yaml")


@pytest.fixture(scope="module")
def sample_table(sample_results, known):
    return build_table(sample_results, versions=["newest"], known_issues=known, sources=[SAMPLE])


# --- reading allure-results ---------------------------------------------------------------------


def test_read_results_takes_ucvm_labels_and_leaves_out_unit_tests(sample_results):
    assert len(sample_results) == 10  # 11 result files, one without ucvm labels
    vdi = next(r for r in sample_results if r.target == "virtualbox-vdi")
    assert (vdi.platform, vdi.evidence, vdi.tier, vdi.status) == (
        "VirtualBox",
        "profile",
        2,
        "failed",
    )
    assert vdi.failed_phase == "mount-os"
    assert vdi.console is not None and "phase=union-root" not in vdi.console.read_text()
    assert vdi.stop == datetime(2025, 11, 24, 13, 15, 8, tzinfo=UTC)
    xen = next(r for r in sample_results if r.target == "xen")
    assert (xen.status, xen.accel, xen.console) == ("skipped", None, None)
    assert xen.skip_reason == "QEMU 7.2 has no Xen emulation"


def test_read_results_names_file_and_label_when_mislabelled(tmp_path):
    source = next(p for p in SAMPLE.glob("*-result.json") if "kvm-newest" in p.read_text())
    data = json.loads(source.read_text())
    for label in data["labels"]:
        if label["name"] == "ucvm.platform":
            label["value"] = "kvm"
    bad = tmp_path / "x-result.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"x-result\.json: label ucvm\.platform='kvm'.*KVM"):
        read_results([tmp_path])
    data["labels"] = [lb for lb in data["labels"] if lb["name"] != "ucvm.tier"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=r"missing label\(s\): ucvm\.tier"):
        read_results([tmp_path])


def test_read_results_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ResultsError, match="no such directory"):
        read_results([tmp_path / "nope"])


def split_into_shards(tmp_path: Path) -> list[Path]:
    """The sample's results dealt over two shard directories, attachments beside each."""
    shards = [tmp_path / "shard-1", tmp_path / "shard-2"]
    for shard in shards:
        shard.mkdir()
        for path in SAMPLE.glob("*-attachment.*"):
            shutil.copy(path, shard)
    for index, path in enumerate(sorted(SAMPLE.glob("*-result.json"))):
        shutil.copy(path, shards[index % 2])
    return shards


def test_shards_are_merged_and_the_newest_rerun_wins(tmp_path, known):
    shards = split_into_shards(tmp_path)
    merged = read_results(shards)
    assert sorted(r.target for r in merged) == sorted(r.target for r in read_results([SAMPLE]))
    table = build_table(merged, versions=["newest"], known_issues=known)
    assert table.cell("VMware", "newest", "profile").symbol == PASS


# --- cell symbols -------------------------------------------------------------------------------


def test_fixture_table_symbols(sample_table):
    symbols = {
        (row.platform, cell.evidence): cell.symbol
        for row in sample_table.rows
        for cell in row.cells
    }
    assert symbols[("KVM", "profile")] == PASS
    assert symbols[("KVM", "real")] == PASS  # kvm-remote
    assert symbols[("VirtualBox", "profile")] == FAIL  # virtualbox-vdi failed
    assert symbols[("VMware", "profile")] == PASS  # broken, then a newer pass
    assert symbols[("Amazon EC2", "profile")] == PASS  # a note does not make ⚡
    assert symbols[("Xen", "profile")] == UNKNOWN
    assert symbols[("OpenStack", "profile")] == UNKNOWN
    assert symbols[("VMware", "real")] == UNKNOWN


def test_fixture_footnotes(sample_table):
    assert cell_notes(sample_table, "Xen") == ["QEMU 7.2 has no Xen emulation"]
    assert cell_notes(sample_table, "OpenStack") == [NO_TARGET]
    assert cell_notes(sample_table, "Amazon EC2")[0].startswith("QEMU has no ENA NIC")
    assert cell_notes(sample_table, "Amazon EC2", "real") == [NO_TARGET]  # note is profile-only
    assert cell_notes(sample_table, "KVM") == []


def test_check_filter_leaves_out_other_checks(sample_results):
    table = table_of(sample_results, check="image_size")
    assert table.cell("KVM", "newest", "profile").symbol == PASS
    assert table.cell("VMware", "newest", "profile").symbol == UNKNOWN


def test_two_targets_on_one_platform_are_combined():
    both_pass = [
        make_result(target="virtualbox", platform="VirtualBox"),
        make_result(target="virtualbox-vdi", platform="VirtualBox", tier=2),
    ]
    cell = table_of(both_pass).cell("VirtualBox", "newest", "profile")
    assert (cell.symbol, cell.targets) == (PASS, ("virtualbox", "virtualbox-vdi"))
    one_fails = [
        both_pass[0],
        dataclasses.replace(both_pass[1], status="failed", failed_phase="network"),
    ]
    table = table_of(one_fails)
    assert table.cell("VirtualBox", "newest", "profile").symbol == FAIL
    row = next(
        line
        for line in render_markdown(table, link_base=Path(".")).splitlines()
        if line.startswith("| VirtualBox")
    )
    assert "virtualbox (tcg)" in row and "virtualbox-vdi: failed in phase network" in row


def test_broken_and_unknown_statuses_are_failures():
    for status in ("broken", "unknown"):
        cell = table_of([make_result(status=status)]).cell("KVM", "newest", "profile")
        assert cell.symbol == FAIL


def test_known_issue_of_kind_issue_gives_lightning_and_respects_version_and_evidence():
    issue = KnownIssue(
        platform="KVM", summary="slow TSC", kind="issue", version="newest", evidence="profile"
    )
    results = [
        make_result(),
        make_result(version="previous"),
        make_result(target="kvm-remote", evidence="real"),
    ]
    table = table_of(results, versions=["newest", "previous"], known_issues=[issue])
    assert table.cell("KVM", "newest", "profile").symbol == KNOWN_ISSUE
    assert table.cell("KVM", "previous", "profile").symbol == PASS
    assert table.cell("KVM", "newest", "real").symbol == PASS
    note = dataclasses.replace(issue, kind="note")
    assert table_of(results, known_issues=[note]).cell("KVM", "newest", "profile").symbol == PASS
    failing = [make_result(status="failed")]
    assert table_of(failing, known_issues=[issue]).cell("KVM", "newest", "profile").symbol == FAIL


def test_never_pass_without_a_passed_result(sample_table):
    only_skips = [make_result(status="skipped", message="Skipped: no KVM here")]
    cell = table_of(only_skips).cell("KVM", "newest", "profile")
    assert cell.symbol == UNKNOWN and cell.date is None
    assert table_of([]).cell("KVM", "newest", "profile").symbol == UNKNOWN
    for row in sample_table.rows:
        for cell in row.cells:
            if cell.symbol in (PASS, KNOWN_ISSUE):
                assert any(result.passed for result in cell.results), cell


def test_pass_beside_a_skip_keeps_the_skip_reason():
    results = [
        make_result(),
        make_result(target="kvm-uefi", status="skipped", message="Skipped: no OVMF"),
    ]
    table = table_of(results)
    assert table.cell("KVM", "newest", "profile").symbol == PASS
    assert cell_notes(table, "KVM") == ["no OVMF"]


def test_rerun_newest_stop_wins_in_either_order():
    old_fail = make_result(status="failed", failed_phase="network", stop=T0)
    new_pass = make_result(stop=T0 + timedelta(minutes=5))
    for results in ([old_fail, new_pass], [new_pass, old_fail]):
        assert table_of(results).cell("KVM", "newest", "profile").symbol == PASS
    new_fail = dataclasses.replace(old_fail, stop=T0 + timedelta(minutes=9))
    assert table_of([new_pass, new_fail]).cell("KVM", "newest", "profile").symbol == FAIL


def test_cell_date_is_utc_of_the_newest_run():
    late = T0 + timedelta(hours=13)  # 2025-11-25 01:00 UTC
    results = [
        make_result(target="virtualbox", platform="VirtualBox", stop=T0),
        make_result(target="virtualbox-vdi", platform="VirtualBox", stop=late),
    ]
    cell = table_of(results).cell("VirtualBox", "newest", "profile")
    assert cell.date == late
    assert "✓ 2025-11-25" in render_markdown(table_of(results), link_base=Path("."))


# --- footnotes ----------------------------------------------------------------------------------


def test_footnotes_are_numbered_in_order_and_deduplicated():
    results = [
        make_result(target="xen", platform="Xen", status="skipped", message="Skipped: no Xen"),
        make_result(target="xen2", platform="Xen", status="skipped", message="Skipped: no Xen"),
        make_result(
            target="parallels", platform="Parallels", status="skipped", message="Skipped: no Xen"
        ),
    ]
    issue = KnownIssue(platform="Xen", summary="no Xen", kind="note")
    table = table_of(results, known_issues=[issue])
    assert [n.number for n in table.footnotes] == list(range(1, len(table.footnotes) + 1))
    texts = [n.text for n in table.footnotes]
    assert len(texts) == len(set(texts))
    # VirtualBox (row 1) references "no target" first; Xen's reason and its note share one number
    assert texts[:2] == [NO_TARGET, "no Xen"]
    assert table.cell("Xen", "newest", "profile").notes == (2,)
    assert table.cell("Parallels", "newest", "profile").notes == (2,)
    assert table.cell("OpenStack", "newest", "real").notes == (1,)


def test_planned_targets_without_result_are_not_called_missing_from_the_matrix():
    table = table_of(
        [],
        planned=[
            ("hyperv", "Microsoft Hyper-V", "profile"),
            ("hyperv-vhd", "Microsoft Hyper-V", "profile"),
        ],
    )
    assert cell_notes(table, "Microsoft Hyper-V") == [
        "no result from hyperv, hyperv-vhd (in matrix.yaml, but it did not run)"
    ]
    assert cell_notes(table, "Microsoft Hyper-V", "real") == [NO_TARGET]


# --- rendering ----------------------------------------------------------------------------------


def test_markdown_has_all_rows_and_columns_in_order(sample_results):
    table = table_of(sample_results, versions=["newest", "previous"])
    lines = render_markdown(table, link_base=Path(".")).splitlines()
    header = next(line for line in lines if line.startswith("| Platform"))
    assert header == (
        "| Platform | newest · profile run here | newest · real platform "
        "| previous · profile run here | previous · real platform "
        "| contextualization · profile run here |"
    )
    rows = [line for line in lines if line.startswith("| ") and line not in (header, lines[3])]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(PLATFORMS)
    assert all(row.count(" | ") == 5 for row in rows)


def test_markdown_links_console_logs_relative_to_the_output(sample_table, tmp_path):
    out = tmp_path / "reports"
    markdown_path, html_path = write_table(sample_table, out)
    markdown = markdown_path.read_text()
    links = re.findall(r"\[console\.log\]\(([^)]+)\)", markdown)
    assert len(links) == 6  # kvm, kvm-remote, virtualbox, virtualbox-vdi, vmware, ec2
    for link in links:
        assert not link.startswith("/") and (out / link).resolve().is_file()
    assert "virtualbox-vdi: failed in phase mount-os" in markdown
    assert "Built " in markdown and str(SAMPLE) in markdown
    assert html_path.read_text().count('">console.log</a>') == 6


def test_html_is_one_page_with_colors_and_escapes_everything(tmp_path):
    console = tmp_path / "a b&c.txt"
    console.write_text("boot")
    evil = make_result(
        target="<script>alert(1)</script>",
        status="failed",
        message='"><img src=x onerror=alert(1)>',
        console=console,
    )
    issue = KnownIssue(
        platform="KVM", summary="a <b>bold</b> claim", kind="note", link="javascript:alert(1)"
    )
    page = render_html(table_of([evil], known_issues=[issue]), link_base=tmp_path)
    assert "<script>" not in page and "<img" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="javascript' not in page
    assert 'href="a%20b%26c.txt"' in page
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<link" not in page
    for css_class in ("pass", "fail", "known", "unknown"):
        assert f".{css_class} " in page
    assert page.count('<tr><th scope="row">') == len(PLATFORMS)


def test_markdown_escapes_table_breaking_text():
    result = make_result(target="a|b*c_", status="failed", failed_phase="x<y>")
    row = next(
        line
        for line in render_markdown(table_of([result]), link_base=Path(".")).splitlines()
        if line.startswith("| KVM")
    )
    assert row.count(" | ") == 3  # newest profile, newest real, contextualization
    assert r"a\|b\*c\_: failed in phase x&lt;y&gt;" in row


def test_results_of_versions_not_in_the_table_are_reported(sample_results):
    table = table_of([make_result(version="Newest")])
    assert table.cell("KVM", "newest", "profile").symbol == UNKNOWN
    assert table.ignored == ["kvm Newest boot: version 'Newest' is not a column of the table"]
    assert "Not in the table: kvm Newest boot" in render_markdown(table, link_base=Path("."))


# --- contextualization column -------------------------------------------------------------------

LOADER_STEPS = "channel,loader_hostname,network,cvmfs_tag,cvmfs_server,resize_rootfs"
CONTEXT_PLAN = [
    ("kvm", "KVM", "profile"),
    ("kvm-remote", "KVM", "real"),
    ("vmware", "VMware", "profile"),
    ("hyperv", "Microsoft Hyper-V", "profile"),
    ("openstack", "OpenStack", "profile"),
    ("ec2", "Amazon EC2", "profile"),
    ("gce", "Google Compute Engine", "profile"),
]


def write_context_result(
    directory: Path,
    *,
    target: str,
    platform: str,
    channel: str,
    status: str = "passed",
    stop: datetime = T0,
    message: str = "",
    took: str = LOADER_STEPS + ",user_data_handed_on,cloud_init,user_and_ssh_key",
    missing: str = "",
    evidence: str = "profile",
    failed_phase: str | None = None,
) -> None:
    """One allure result of suites/boot/test_context.py, as allure-pytest writes it."""
    uuid = f"{target}-{channel}-{int(stop.timestamp())}"
    labels = {
        "ucvm.check": "context",
        "ucvm.target": target,
        "ucvm.platform": platform,
        "ucvm.version": "previous",
        "ucvm.evidence": evidence,
        "ucvm.tier": "1",
        "ucvm.channel": channel,
        "ucvm.context_took_effect": took,
        "ucvm.context_missing": missing,
    }
    if failed_phase:
        labels["ucvm.failed_phase"] = failed_phase
    attachments = []
    if status != "skipped":
        (directory / f"{uuid}-console-attachment.txt").write_text("ucvm: phase=start t=0.1\n")
        (directory / f"{uuid}-effects-attachment.json").write_text("{}")
        attachments = [
            {"name": "console.log", "source": f"{uuid}-console-attachment.txt"},
            {"name": "context-effects.json", "source": f"{uuid}-effects-attachment.json"},
        ]
    result = {
        "name": f"test_contextualizes_on_channel[{target}-previous-{channel}]",
        "status": status,
        "statusDetails": {"message": message},
        "attachments": attachments,
        "stop": int(stop.timestamp() * 1000),
        "labels": [{"name": name, "value": value} for name, value in labels.items()],
    }
    (directory / f"{uuid}-result.json").write_text(json.dumps(result))


@pytest.fixture
def context_results(tmp_path: Path) -> Path:
    """One platform per case: passed, partial, failed, skipped, a rerun, a real-platform run."""
    results = tmp_path / "results"
    results.mkdir()
    write_context_result(results, target="kvm", platform="KVM", channel="nocloud")
    write_context_result(
        results,
        target="vmware",
        platform="VMware",
        channel="ovf",
        status="failed",
        message="AssertionError: did not take effect: runcmd (...)\nassert not ['runcmd']",
        took=LOADER_STEPS + ",cloud_init,write_files",
        missing="runcmd",
    )
    write_context_result(
        results,
        target="ec2",
        platform="Amazon EC2",
        channel="ec2-imds",
        status="failed",
        message="AssertionError: hang in phase network: no DHCP lease\nassert False",
        took="channel",  # the boot failed: ✗, not ◐
        missing="loader_hostname,network",
        failed_phase="network",
    )
    write_context_result(
        results,
        target="gce",
        platform="Google Compute Engine",
        channel="gce-metadata",
        status="skipped",
        message="Skipped: no metadata server here",
        took="",
    )
    for channel, stop in (("config-drive", T0), ("openstack-metadata", T0 - timedelta(hours=1))):
        write_context_result(
            results, target="openstack", platform="OpenStack", channel=channel, stop=stop
        )
    write_context_result(  # an older failure of config-drive, rerun above
        results,
        target="openstack",
        platform="OpenStack",
        channel="config-drive",
        status="failed",
        stop=T0 - timedelta(hours=2),
        message="AssertionError: did not take effect: channel",
        took="",
        missing="channel",
    )
    write_context_result(
        results, target="kvm-remote", platform="KVM", channel="nocloud", evidence="real"
    )
    return results


@pytest.fixture
def context_table(context_results: Path):
    return table_of(
        read_results([context_results]),
        versions=["newest", "previous"],
        planned=CONTEXT_PLAN,
        sources=[context_results],
    )


def context_notes(table, platform: str) -> list[str]:
    cell = table.context_cell(platform)
    numbers = [*cell.notes, *(number for entry in cell.entries for number in entry.notes)]
    return [footnote_text(table, number) for number in numbers]


def markdown_context_cell(markdown: str, platform: str) -> str:
    """The contextualization cell of a row (a rebase column may follow it)."""
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| Platform |"))
    column = header.removesuffix(" |").split(" | ").index("contextualization · profile run here")
    row = next(line for line in lines if line.startswith(f"| {platform} |"))
    return row.removesuffix(" |").split(" | ")[column]


def test_context_labels_are_read(context_results):
    results = {(r.target, r.channel, r.status): r for r in read_results([context_results])}
    partial = results[("vmware", "ovf", "failed")]
    assert partial.check == "context" and partial.missing == ("runcmd",)
    assert partial.took_effect[:2] == ("channel", "loader_hostname")
    assert results[("gce", "gce-metadata", "skipped")].took_effect == ()
    assert results[("kvm", "nocloud", "passed")].console is not None


def test_context_cell_symbols(context_table):
    symbols = {platform: context_table.context_cell(platform).symbol for platform in PLATFORMS}
    assert symbols["KVM"] == PASS  # the real-platform run is a footnote, not an entry
    assert symbols["VMware"] == PARTIAL
    assert symbols["Amazon EC2"] == FAIL
    assert symbols["Google Compute Engine"] == UNKNOWN  # skipped: never ✓
    assert symbols["OpenStack"] == PASS  # the newer config-drive pass wins over the old failure
    assert symbols["Microsoft Hyper-V"] == UNKNOWN
    openstack = context_table.context_cell("OpenStack")
    assert [(e.label, e.symbol) for e in openstack.entries] == [
        ("config-drive", PASS),
        ("openstack-metadata", PASS),
    ]
    assert openstack.date == T0


def test_context_footnotes(context_table):
    assert context_notes(context_table, "KVM") == [
        "real platform: kvm-remote · previous · nocloud: passed 2025-11-24"
    ]
    assert context_notes(context_table, "VMware") == [
        "vmware · previous · ovf: partly: took effect: channel, loader_hostname, network, "
        "cvmfs_tag, cvmfs_server, resize_rootfs, cloud_init, write_files; "
        "did not take effect: runcmd"
    ]
    assert context_notes(context_table, "Amazon EC2") == [
        "ec2 · previous · ec2-imds: failed in phase network: "
        "AssertionError: hang in phase network: no DHCP lease"
    ]
    assert context_notes(context_table, "Google Compute Engine") == ["no metadata server here"]
    assert context_notes(context_table, "Microsoft Hyper-V") == [NO_CONTEXT_RESULT]
    assert context_notes(context_table, "Xen") == [NO_TARGET]  # not planned here
    assert context_notes(context_table, "OpenStack") == []


def test_context_column_in_markdown(context_table, context_results, tmp_path):
    markdown = write_table(context_table, tmp_path / "reports")[0].read_text()
    note = {n.text.split(":")[0]: n.number for n in context_table.footnotes}
    console = "../results/{}-console-attachment.txt"
    assert markdown_context_cell(markdown, "VMware") == (
        "◐ 2025-11-24<br>◐ ovf [console.log]("
        + console.format(f"vmware-ovf-{int(T0.timestamp())}")
        + f") \\[{note['vmware · previous · ovf']}\\]"
    )
    assert markdown_context_cell(markdown, "KVM").startswith(
        f"✓ 2025-11-24 \\[{note['real platform']}\\]<br>✓ nocloud [console.log]("
    )
    assert "<br>✗ ec2-imds [console.log](" in markdown_context_cell(markdown, "Amazon EC2")
    openstack = markdown_context_cell(markdown, "OpenStack")  # the newer config-drive pass won
    assert openstack.startswith("✓ 2025-11-24<br>✓ config-drive [console.log](")
    assert "<br>✓ openstack-metadata [console.log](" in openstack and "✗" not in openstack
    gce = markdown_context_cell(markdown, "Google Compute Engine")
    assert gce == f"?<br>? gce-metadata \\[{note['no metadata server here']}\\]"
    hyperv = markdown_context_cell(markdown, "Microsoft Hyper-V")
    assert hyperv == f"? \\[{note[NO_CONTEXT_RESULT]}\\]"
    assert "- ◐ partly: some steps took effect, see the footnote" in markdown
    assert f"{note['vmware · previous · ovf']}. vmware · previous · ovf: partly: " in markdown


def test_context_column_in_html(context_table, tmp_path):
    page = write_table(context_table, tmp_path / "reports")[1].read_text()
    assert '<th scope="col">contextualization<br><small>profile run here</small></th>' in page
    vmware = page.split('<tr><th scope="row">VMware')[1].split("</tr>")[0]
    assert vmware.count("<td") == 5
    last = vmware.split("<td")[-1]
    assert last.startswith(' class="partial"><span class="symbol">◐</span>')
    assert '<span class="symbol partial">◐</span> ovf <a href="../results/' in last
    assert 'title="AssertionError: did not take effect: runcmd (...)' in last
    assert '<span class="symbol partial">◐</span> partly: some steps took effect' in page
    assert ".partial " in page


def test_context_rerun_key_keeps_channels_apart_and_newest_wins():
    config_drive = make_result(check="context", target="openstack", channel="config-drive")
    metadata = dataclasses.replace(config_drive, channel="openstack-metadata", status="failed")
    newer = dataclasses.replace(config_drive, stop=T0 + timedelta(minutes=1), status="skipped")
    cell = table_of([config_drive, metadata, newer]).context_cell("KVM")
    assert [(e.label, e.symbol) for e in cell.entries] == [
        ("config-drive", UNKNOWN),
        ("openstack-metadata", FAIL),
    ]


def test_context_entries_name_target_and_version_only_when_ambiguous():
    results = [
        make_result(check="context", target="virtualbox", platform="VirtualBox", channel="nocloud"),
        make_result(check="context", target="virtualbox-vdi", platform="VirtualBox", channel=None),
        make_result(
            check="context", target="virtualbox", platform="VirtualBox", channel="nocloud",
            version="previous",
        ),
    ]  # fmt: skip
    cell = table_of(results, versions=["newest", "previous"]).context_cell("VirtualBox")
    assert [e.label for e in cell.entries] == [
        "virtualbox nocloud (newest)",
        "virtualbox nocloud (previous)",
        "virtualbox-vdi (newest)",
    ]


def test_only_the_boot_table_has_a_context_column_and_the_partial_legend(context_results):
    results = read_results([context_results])
    image_size = table_of(results, check="image_size")
    assert not image_size.has_context
    markdown = render_markdown(image_size, link_base=Path("."))
    assert "contextualization" not in markdown and "◐" not in markdown
    with pytest.raises(KeyError, match="no contextualization column"):
        image_size.context_cell("KVM")
    boot = table_of(results)  # context covers `previous`: not a column of this table
    assert boot.context_cell("KVM").symbol == UNKNOWN
    ignored = "kvm previous context nocloud: version 'previous' is not a column of the table"
    assert ignored in boot.ignored


def test_write_report_builds_the_context_column_from_a_results_dir(context_results, tmp_path):
    text = (REPO / "matrix.yaml").read_text()
    (tmp_path / "matrix.yaml").write_text(re.sub(r"(?m)^(\s+reports:).*$", r"\1 out", text))
    shutil.copy(REPO / "known-issues.yaml", tmp_path)
    assert write_report([context_results], load_matrix(tmp_path / "matrix.yaml")) == 0
    markdown = (tmp_path / "out" / "support-table.md").read_text()
    assert "| contextualization · profile run here |" in markdown
    assert markdown_context_cell(markdown, "VMware").startswith("◐ 2025-11-24<br>◐ ovf ")
    assert NO_CONTEXT_RESULT in markdown  # e.g. VirtualBox: planned, no context result


def test_the_report_is_written_from_plain_data_without_a_matrix(context_results, tmp_path):
    paths = publish.write_report(
        [context_results],
        tmp_path / "out",
        versions=["previous"],
        known_issues_path=REPO / "known-issues.yaml",
        planned=CONTEXT_PLAN,
    )
    assert (paths.markdown, paths.html) == (
        tmp_path / "out" / "support-table.md",
        tmp_path / "out" / "support-table.html",
    )
    assert paths.allure == tmp_path / "out" / "allure-report" / "index.html"
    assert paths.allure.is_file() and paths.html.is_file()
    markdown = paths.markdown.read_text()
    assert markdown_context_cell(markdown, "VMware").startswith("◐ 2025-11-24<br>◐ ovf ")
    with pytest.raises(KnownIssuesError, match="cannot read"):
        publish.write_report(
            [context_results],
            tmp_path / "again",
            versions=["previous"],
            known_issues_path=tmp_path / "absent.yaml",
            planned=None,
        )


def test_the_gate_is_judged_from_plain_data_without_a_matrix(context_results):
    shards = [SAMPLE, context_results]  # the context results are not judged: boot only
    judged = publish.judge(
        shards,
        known_issues_path=REPO / "known-issues.yaml",
        required_tiers=[1],
        allow_known_issues=True,
        planned=[("kvm", "newest", 1)],
    )
    assert judged == verdict(
        [r for r in read_results(shards) if r.check == "boot"],
        required_tiers=[1],
        allow_known_issues=True,
        known_issues=load_known_issues(REPO / "known-issues.yaml"),
        planned=[("kvm", "newest", 1)],
    )
    assert judged.passed, judged
    with pytest.raises(ResultsError, match="no such directory"):
        publish.judge(
            [context_results / "nope"],
            known_issues_path=REPO / "known-issues.yaml",
            required_tiers=[1],
            allow_known_issues=True,
            planned=(),
        )


# --- known issues -------------------------------------------------------------------------------


def test_real_known_issues_file_loads(known):
    assert [issue.platform for issue in known] == [
        "Amazon EC2",
        "Google Compute Engine",
        "Microsoft Hyper-V",
    ]
    assert all(issue.kind == "note" and issue.evidence == "profile" for issue in known)


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "known-issues.yaml"
    path.write_text(text)
    return path


def test_known_issue_defaults(tmp_path):
    path = write_yaml(tmp_path, "- platform: Xen\n  summary: pv drivers only\n")
    assert load_known_issues(path) == [KnownIssue(platform="Xen", summary="pv drivers only")]
    assert load_known_issues(write_yaml(tmp_path, "# nothing yet\n")) == []


ENTRY_0 = r"\[0\] \(platform 'KVM'\)"  # the key path of the first entry, named by its platform


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "- platform: KVM\n  summary: s\n  platfrom: KVM\n",
            rf"known-issues\.yaml:3:3: {ENTRY_0}\.platfrom: unknown key 'platfrom' "
            r"\(did you mean platform\?\); allowed keys: platform, kind",
        ),
        (
            "- platform: KVM\n  summary: s\n- platform: EC2\n  summary: s\n",
            r"known-issues\.yaml:3:13: \[1\] \(platform 'EC2'\)\.platform: unknown platform 'EC2'; "
            r"expected one of: VirtualBox, VMware, KVM, .*Amazon EC2, Google Compute Engine$",
        ),
        (
            "- platform: KVM\n  kind: note\n",
            rf"known-issues\.yaml:1:3: {ENTRY_0}\.summary: required key is missing; "
            r"expected a non-empty string",
        ),
        (
            "- platform: KVM\n  summary: s\n  kind: bug\n",
            rf"known-issues\.yaml:3:9: {ENTRY_0}\.kind: expected one of 'issue' or 'note'; "
            r"found string 'bug'",
        ),
        (
            "- platform: KVM\n  summary: s\n  evidence: emulated\n",
            rf":3:13: {ENTRY_0}\.evidence: unknown evidence 'emulated'; "
            r"expected one of: profile, real",
        ),
        (
            "- platform: KVM\n  summary: s\n  version: 2024.1\n",
            rf":3:12: {ENTRY_0}\.version: expected a string; "
            r"found number 2024\.1 \(put it in quotes",
        ),
        (
            "- summary: s\n",
            r":1:3: \[0\]\.platform: required key is missing; expected one of: VirtualBox",
        ),
        ("platform: KVM\nsummary: s\n", r":1:1: expected a list of known issues"),
        (
            "- platform: KVM\n  summary: s\n- just text\n",
            r":3:3: \[1\]: expected a mapping with the keys platform, kind, target, check, "
            r"channel, version, evidence, summary, link, expires; found string 'just text'",
        ),
        (
            "- platform: KVM\n  summary: s\n  expires: 2027-02-30\n",
            rf":3:12: {ENTRY_0}\.expires: expected a day YYYY-MM-DD; found '2027-02-30'",
        ),
        (
            "- platform: KVM\n  summary: s\n  expires: 2027-01-01T10:00:00\n",
            rf":3:12: {ENTRY_0}\.expires: expected a day YYYY-MM-DD; found '2027-01-01T10:00:00'",
        ),
        ("- platform: KVM\n  summary: [unclosed\n", r"known-issues\.yaml:3:1: invalid YAML"),
        (
            "- platform: KVM\n  summary: '  '\n",
            rf":2:12: {ENTRY_0}\.summary: expected a non-empty string; found string '  '",
        ),
        (
            "- platform: KVM\n  summary: s\n  link:\n",
            rf":3:3: {ENTRY_0}\.link: expected a non-empty string, or leave the key out; "
            r"found nothing \(null\)",
        ),
    ],
)
def test_known_issues_errors_name_file_line_column_key_and_expectation(tmp_path, text, expected):
    with pytest.raises(KnownIssuesError, match=expected):
        load_known_issues(write_yaml(tmp_path, text))


def test_known_issues_errors_are_all_given_at_once_in_file_order(tmp_path):
    text = (
        "- platform: Xen\n  sumary: pv drivers only\n"  # the typo, not the missing summary
        "- platform: KVM\n  summary: 3\n  kind: bug\n"
        "- platform: VMware\n  kind: note\n"
    )
    with pytest.raises(KnownIssuesError) as caught:
        load_known_issues(write_yaml(tmp_path, text))
    where = tmp_path / "known-issues.yaml"
    assert caught.value.problems == (
        f"{where}:2:3: [0] (platform 'Xen').sumary: unknown key 'sumary' (did you mean "
        "summary?); allowed keys: platform, kind, target, check, channel, version, evidence, "
        "summary, link, expires",
        f"{where}:4:12: [1] (platform 'KVM').summary: expected a string; found integer 3 "
        "(put it in quotes to make it a string)",
        f"{where}:5:9: [1] (platform 'KVM').kind: expected one of 'issue' or 'note'; "
        "found string 'bug'",
        f"{where}:6:3: [2] (platform 'VMware').summary: required key is missing; "
        "expected a non-empty string",
    )
    assert str(caught.value) == "\n".join(caught.value.problems)


def test_known_issues_missing_file(tmp_path):
    with pytest.raises(KnownIssuesError, match="cannot read"):
        load_known_issues(tmp_path / "absent.yaml")


# --- gate ---------------------------------------------------------------------------------------


def test_gate_passes_when_every_required_result_passed(sample_results, known):
    result = verdict(
        sample_results, required_tiers=[1], allow_known_issues=True, known_issues=known
    )
    assert result.passed, result.lines()
    assert result.lines()[0] == "gate: PASSED"


def test_gate_fails_on_a_failed_required_result_naming_target_and_phase(sample_results, known):
    result = verdict(
        sample_results, required_tiers=[1, 2], allow_known_issues=True, known_issues=known
    )
    assert not result.passed
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith("virtualbox-vdi newest boot (tier 2")
    assert "failed in phase mount-os" in result.reasons[0]


def test_gate_fails_on_a_skipped_required_result(sample_results, known):
    result = verdict(
        sample_results, required_tiers=[3], allow_known_issues=True, known_issues=known
    )
    assert not result.passed
    skipped = [reason for reason in result.reasons if "did not run" in reason]
    assert {reason.split()[0] for reason in skipped} == {"xen", "parallels"}
    assert all("is not a pass" in reason for reason in skipped)
    assert "QEMU 7.2 has no Xen emulation" in str(result)


def test_gate_known_issues_fail_only_when_not_allowed():
    issue = KnownIssue(platform="KVM", summary="clock drifts", kind="issue")
    note = KnownIssue(platform="KVM", summary="just a note", kind="note")
    results = [make_result()]
    strict = verdict(
        results, required_tiers=[1], allow_known_issues=False, known_issues=[issue, note]
    )
    assert not strict.passed and "clock drifts" in strict.reasons[0]
    assert "just a note" not in str(strict)
    lenient = verdict(results, required_tiers=[1], allow_known_issues=True, known_issues=[issue])
    assert lenient.passed and "clock drifts" in lenient.notes[0]
    only_note = verdict(results, required_tiers=[1], allow_known_issues=False, known_issues=[note])
    assert only_note.passed


def test_gate_uses_the_newest_rerun_and_ignores_other_tiers():
    results = [
        make_result(status="failed", stop=T0),
        make_result(stop=T0 + timedelta(minutes=1)),
        make_result(target="xen", platform="Xen", tier=3, status="skipped"),
    ]
    assert verdict(results, required_tiers=[1], allow_known_issues=False, known_issues=[]).passed
    flipped = [make_result(stop=T0), make_result(status="broken", stop=T0 + timedelta(minutes=1))]
    assert not verdict(
        flipped, required_tiers=[1], allow_known_issues=False, known_issues=[]
    ).passed


def test_gate_fails_with_no_result_of_a_required_tier():
    result = verdict(
        [make_result(tier=2)], required_tiers=[1], allow_known_issues=True, known_issues=[]
    )
    assert not result.passed
    assert result.reasons == ["no result of required tier(s) 1: nothing was proven"]


# --- Allure HTML --------------------------------------------------------------------------------


def embedded_names(index: Path) -> set[str]:
    """Test names from the single-file report's embedded (base64) data files."""
    names: set[str] = set()
    for payload in re.findall(r'd\("[^"]+\.json","([A-Za-z0-9+/=]*)"\)', index.read_text()):
        text = base64.b64decode(payload).decode("utf-8", errors="replace")
        names.update(re.findall(r'"name":"(test_[^"]+)"', text))
    return names


def test_allure_generates_a_single_file_report_without_analytics(tmp_path):
    index = generate_html([SAMPLE], tmp_path / "allure-report")
    assert index == tmp_path / "allure-report" / "index.html"
    names = embedded_names(index)
    assert {
        "test_boot[kvm-newest]",
        "test_boot[virtualbox-vdi-newest]",
        "test_boot[xen-newest]",
        "test_matrix_rejects_unknown_key",
    } <= names
    page = index.read_text()
    assert "googletagmanager" not in page
    assert not re.search(r'<script[^>]+src="(?!data:)', page)  # nothing loaded from elsewhere


def test_allure_merges_several_result_directories(tmp_path):
    shards = split_into_shards(tmp_path)
    assert not {"test_boot[xen-newest]", "test_boot[ec2-newest]"} <= {
        json.loads(p.read_text())["name"] for p in shards[0].glob("*-result.json")
    }
    index = generate_html(shards, tmp_path / "report")
    assert {"test_boot[xen-newest]", "test_boot[ec2-newest]"} <= embedded_names(index)


def test_allure_missing_binary_says_to_run_setup(tmp_path):
    with pytest.raises(AllureError, match=r"scripts/setup\.sh"):
        generate_html([SAMPLE], tmp_path, allure_bin=tmp_path / "no-allure")


def test_gate_fails_when_a_planned_required_cell_has_no_result(sample_results, known):
    planned = [("kvm", "newest", 1), ("openstack", "newest", 1), ("xen", "newest", 3)]
    result = verdict(
        sample_results,
        required_tiers=[1],
        allow_known_issues=True,
        known_issues=known,
        planned=planned,
    )
    assert not result.passed
    assert any("openstack · newest (tier 1): no result" in reason for reason in result.reasons)
    assert not any("xen" in reason for reason in result.reasons)  # tier 3 does not gate


def test_a_known_issue_scoped_to_a_target_and_check_marks_only_those_and_expires():
    """An entry naming a target and check gives ⚡ only to a cell with a result of that
    target and check; from its expires day on it gives nothing, and the gate no longer allows
    it (the cell is then a plain pass)."""
    from datetime import date, timedelta

    result = make_result(target="kvm", platform="KVM", version="newest")
    scoped = KnownIssue(platform="KVM", summary="slow", target="kvm", check="boot")
    other = KnownIssue(platform="KVM", summary="other", target="kvm2", check="boot")
    table = build_table([result], versions=["newest"], known_issues=[scoped, other])
    assert table.cell("KVM", "newest", "profile").symbol == "⚡"
    assert "slow" in [note.text for note in table.footnotes]
    assert "other" not in [note.text for note in table.footnotes]
    yesterday = date.today() - timedelta(days=1)
    expired = KnownIssue(platform="KVM", summary="slow", target="kvm", expires=yesterday)
    assert expired.expired() and not expired.applies_to("KVM", "newest", "profile", target="kvm")
    table = build_table([result], versions=["newest"], known_issues=[expired])
    assert table.cell("KVM", "newest", "profile").symbol == "✓"


# --- plots in the pages, and the Allure report's panels and history ----------------------------


def write_boot_result(
    directory: Path, target: str, platform: str, *, ready_t: float, fetched: int, stop: datetime
) -> None:
    """A boot cell's allure result with a boot record from a real console (lab.observe)."""
    from lab.observe import record_from_console

    console = (
        "ucvm: phase=start t=0.50\nucvm: phase=network t=2.00\nucvm: phase=repo t=3.00\n"
        f"ucvm: phase=ready t={ready_t:.2f} cache_bytes=4096 fetched_bytes={fetched}\n"
    )
    timeline = [(1.0 + i, line) for i, line in enumerate(console.splitlines())]
    uuid = f"{target}-{int(stop.timestamp())}"
    record = record_from_console(console, timeline, accel="tcg")
    (directory / f"{uuid}-record-attachment.json").write_text(record.to_json())
    (directory / f"{uuid}-console-attachment.txt").write_text(console)
    labels = {
        "ucvm.check": "boot", "ucvm.target": target, "ucvm.platform": platform,
        "ucvm.version": "newest", "ucvm.evidence": "profile", "ucvm.tier": "1",
        "ucvm.accel": "tcg",
    }  # fmt: skip
    result = {
        "name": f"test_boots[{target}-newest]",
        "fullName": f"suites.boot.test_boot#test_boots[{target}-newest]",
        "historyId": f"{target}-newest",
        "status": "passed",
        "start": int(stop.timestamp() * 1000) - 30_000,
        "stop": int(stop.timestamp() * 1000),
        "attachments": [
            {"name": "console.log", "source": f"{uuid}-console-attachment.txt"},
            {"name": "boot-record.json", "source": f"{uuid}-record-attachment.json"},
        ],
        "labels": [{"name": name, "value": value} for name, value in labels.items()],
    }
    (directory / f"{uuid}-result.json").write_text(json.dumps(result))


@pytest.fixture
def boot_results(tmp_path: Path) -> Path:
    results = tmp_path / "boot-results"
    results.mkdir()
    write_boot_result(results, "kvm", "KVM", ready_t=9.5, fetched=8_192_000, stop=T0)
    write_boot_result(results, "vmware", "VMware", ready_t=11.0, fetched=9_000_000, stop=T0)
    return results


def embedded_files(index: Path) -> dict[str, bytes]:
    """The single-file report's embedded files (``d("path","base64")`` calls), decoded."""
    found = re.findall(r'd\("([^"]+)","([A-Za-z0-9+/=]*)"\)', index.read_text())
    return {name: base64.b64decode(payload) for name, payload in found}


def embedded_json(index: Path, name: str) -> Any:
    return json.loads(embedded_files(index)[name])


def report_of(results: Path, out: Path, **kwargs: object) -> publish.ReportPaths:
    return publish.write_report(
        [results], out, versions=["newest"], known_issues_path=REPO / "known-issues.yaml",
        planned=None, **kwargs,
    )  # fmt: skip


def test_the_pages_embed_the_plots_relative_with_alt_text(boot_results, tmp_path):
    paths = report_of(boot_results, tmp_path / "out")
    ready, fetched = paths.plots
    assert ready.svg == tmp_path / "out" / "plots" / "ready-by-phase.svg" and ready.svg.is_file()
    assert fetched.png is not None and fetched.png.is_file()
    page = paths.html.read_text()
    assert "<h2>Plots</h2>" in page
    assert re.search(
        r'<img src="plots/ready-by-phase\.svg" alt="Time to ready, by phase '
        r"\(newest boot per cell, seconds\): vmware · newest · tcg [\d.]+ s; kvm",
        page,
    )
    assert '<img src="plots/fetched-bytes.svg" alt="Bytes fetched per version' in page
    markdown = paths.markdown.read_text()
    assert "## Plots" in markdown
    assert re.search(r"!\[Time to ready, by phase [^]]*\]\(plots/ready-by-phase\.svg\)", markdown)
    assert "](plots/fetched-bytes.svg)" in markdown


def test_without_boot_results_the_page_says_so_instead_of_an_empty_plot(context_results, tmp_path):
    paths = report_of(context_results, tmp_path / "out")
    page = paths.html.read_text()
    assert '<p class="meta">Time to ready, by phase: no boot results.</p>' in page
    assert "Bytes fetched per version: no boot results." in page
    assert "<img" not in page and not (tmp_path / "out" / "plots" / "ready-by-phase.svg").exists()
    assert "Time to ready, by phase: no boot results." in paths.markdown.read_text()
    assert embedded_json(paths.allure, "widgets/globals.json") == {"errors": [], "attachments": []}


def test_the_allure_report_has_the_environment_the_executor_and_the_plots(boot_results, tmp_path):
    environment = {
        "host": "lab-1", "CPUs": "2", "accelerator": "auto (asked for)",
        "boot loader": "0.1, sha256 kernel 85667e6c initrd 40d1b2a4",
        "matrix": "matrix.yaml, sha256 =:#!\\x", " odd key:=": "  μ  ",
    }  # fmt: skip
    github = {"GITHUB_RUN_ID": "77", "GITHUB_REPOSITORY": "lab/ucvm", "GITHUB_WORKFLOW": "nightly",
              "GITHUB_RUN_NUMBER": "41"}  # fmt: skip
    executor = executor_from_env(github, "1202183012ab12")
    paths = report_of(boot_results, tmp_path / "out", environment=environment, executor=executor)
    rows = embedded_json(paths.allure, "widgets/environment.json")
    panel = {row["name"]: row["values"] for row in rows}
    assert panel == {**{k: [v] for k, v in environment.items()}, "accelerator": ["tcg (2 results)"]}
    assert embedded_json(paths.allure, "widgets/executors.json") == [{
        "name": "GitHub Actions", "type": "github", "buildName": "nightly #41 (run 1202183012ab12)",
        "buildUrl": "https://github.com/lab/ucvm/actions/runs/77", "url": "https://github.com",
        "buildOrder": 1, "reportName": "ucvm-lab",
    }]  # fmt: skip
    attachments = embedded_json(paths.allure, "widgets/globals.json")["attachments"]
    assert [(a["name"], a["type"]) for a in attachments] == [
        ("Time to ready, by phase", "image/png"), ("Bytes fetched per version", "image/png"),
    ]  # fmt: skip
    files = embedded_files(paths.allure)
    ready_png = paths.plots[0].png
    assert ready_png is not None
    assert files[f"data/attachments/{attachments[0]['source']}"] == ready_png.read_bytes()


def test_allure_history_feeds_the_trend_across_reports_and_a_rebuild_adds_none(
    boot_results, tmp_path
):
    history = tmp_path / "reports" / publish.ALLURE_HISTORY
    out = tmp_path / "reports"

    def trend(paths: publish.ReportPaths) -> list[int]:
        points = embedded_json(paths.allure, "widgets/history-trend.json")
        return [point["buildOrder"] for point in points]

    executor = executor_from_env({}, "1202000000aaaa")
    first = report_of(boot_results, out, history=history, executor=executor)
    assert len(history.read_text().splitlines()) == 1 and trend(first) == [1]
    rebuilt = report_of(boot_results, out, history=history, executor=executor)
    assert len(history.read_text().splitlines()) == 1 and trend(rebuilt) == [1]
    write_boot_result(boot_results, "kvm", "KVM", ready_t=9.0, fetched=1, stop=T0 + timedelta(1))
    second = report_of(boot_results, out, history=history, executor=executor)
    assert len(history.read_text().splitlines()) == 2 and trend(second) == [2, 1]
    write_boot_result(boot_results, "kvm", "KVM", ready_t=9.0, fetched=1, stop=T0 + timedelta(2))
    generate_html([boot_results], out / "limited", history=history, history_limit=1)
    assert len(history.read_text().splitlines()) == 1  # historyLimit: the newest only


def test_a_corrupt_allure_history_is_left_out_with_a_note_and_left_as_it_is(boot_results, tmp_path):
    history = tmp_path / publish.ALLURE_HISTORY
    history.write_text('{"uuid": "a"}\n{not json\n')
    paths = report_of(boot_results, tmp_path / "out", history=history)
    assert paths.allure.is_file() and history.read_text() == '{"uuid": "a"}\n{not json\n'
    assert len(paths.notes) == 1
    assert f"{history}:2: not a JSON line of Allure's history" in paths.notes[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Executor("local", "local", "run R1")),
        ({"CI": "false"}, Executor("local", "local", "run R1")),
        ({"CI": "true"}, Executor("CI", "ci", "run R1")),
        (
            {"GITLAB_CI": "true", "CI_JOB_NAME": "nightly", "CI_JOB_ID": "9",
             "CI_JOB_URL": "https://gitlab.example/lab/-/jobs/9",
             "CI_SERVER_URL": "https://gitlab.example"},
            Executor("GitLab CI", "gitlab", "nightly #9 (run R1)",
                     "https://gitlab.example/lab/-/jobs/9", "https://gitlab.example"),
        ),
        (
            {"JENKINS_URL": "https://ci.example/", "JOB_NAME": "ucvm", "BUILD_NUMBER": "3",
             "BUILD_URL": "https://ci.example/job/ucvm/3/"},
            Executor("Jenkins", "jenkins", "ucvm #3 (run R1)", "https://ci.example/job/ucvm/3/",
                     "https://ci.example/"),
        ),
    ],
)  # fmt: skip
def test_the_executor_is_the_ci_job_from_its_variables_or_local(env, expected):
    assert executor_from_env(env, "R1") == expected


def test_the_executor_gives_only_web_links():
    executor = executor_from_env({"CI_JOB_URL": "javascript:alert(1)", "CI_JOB_ID": "9"}, "R1")
    assert "buildUrl" not in executor.as_json(build_order=1, report_name="x")


def test_the_command_line_fills_the_environment_and_keeps_allure_history(boot_results, tmp_path):
    text = (REPO / "matrix.yaml").read_text()
    (tmp_path / "matrix.yaml").write_text(re.sub(r"(?m)^(\s+reports:).*$", r"\1 out", text))
    shutil.copy(REPO / "known-issues.yaml", tmp_path)
    lab = load_matrix(tmp_path / "matrix.yaml")
    assert write_report([boot_results], lab, "1202183012ab12") == 0
    index = tmp_path / "out" / "allure-report" / "index.html"
    panel = {row["name"] for row in embedded_json(index, "widgets/environment.json")}
    assert {"host", "CPUs", "accelerator", "QEMU", "libvirt", "boot loader", "matrix"} <= panel
    [executor] = embedded_json(index, "widgets/executors.json")
    assert "run 1202183012ab12" in executor["buildName"]  # local or a CI job, with the run
    assert (tmp_path / "out" / publish.ALLURE_HISTORY).is_file()
    assert (tmp_path / "out" / "plots" / "ready-by-phase.svg").is_file()
