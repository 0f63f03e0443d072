"""The support table's rebase column and the gate's rebase cells, from allure results as
suites/rebase writes them (through lab.evidence's writers), to Markdown, HTML and a verdict."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lab.evidence import PLATFORMS, Result, cell_labels, read_results, rebase_labels
from lab.report import publish
from lab.report.gate import verdict
from lab.report.render import render_markdown, write_table
from lab.report.table import (
    FAIL,
    NO_REBASE_CELL,
    NO_REBASE_RESULT,
    PASS,
    UNKNOWN,
    build_table,
)
from tests.commands import ucvm_lab

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 11, 24, 12, 0, tzinfo=UTC)
PAIRS = (("previous", "newest"), ("1.0", "newest"), ("newest", "devel"))
PLATFORM_OF = {"kvm": "KVM", "vmware": "VMware", "virtualbox": "VirtualBox"}
PLAN = [  # as lab/cli hands it over: (target, platform, evidence, FROM, TO)
    (target, platform, "profile", source, dest)
    for target, platform in PLATFORM_OF.items()
    for source, dest in PAIRS
]
R1 = "R1 changed locally and upstream: the local copy kept, upstream's beside it as .ucvm-new"
R7 = "R7 the local user keeps her name, password and files"


def write_rebase_result(
    directory: Path,
    *,
    target: str,
    source: str,
    dest: str,
    status: str = "passed",
    failed: tuple[str, ...] = (),
    message: str = "",
    platform: str | None = None,
    evidence: str = "profile",
    tier: int = 1,
    stop: datetime = T0,
) -> None:
    """One allure result of suites/rebase, labelled as the suite labels it."""
    platform = platform or PLATFORM_OF[target]
    uuid = f"{target}-{source}-to-{dest}-{int(stop.timestamp())}"
    labels = cell_labels(
        check="rebase", target=target, platform=platform, version=dest, evidence=evidence,
        tier=tier, rebase_from=source,
    )  # fmt: skip
    attachments = []
    if status != "skipped":
        labels |= rebase_labels(source, list(failed))
        (directory / f"{uuid}-console-attachment.txt").write_text("ucvm: phase=start t=0.1\n")
        attachments = [{"name": "console.log", "source": f"{uuid}-console-attachment.txt"}]
    result = {
        "name": f"test_rebase_carries_local_changes[{target}-{source}-to-{dest}]",
        "status": status,
        "statusDetails": {"message": message},
        "attachments": attachments,
        "stop": int(stop.timestamp() * 1000),
        "labels": [{"name": name, "value": value} for name, value in labels.items()],
    }
    (directory / f"{uuid}-result.json").write_text(json.dumps(result))


@pytest.fixture
def rebase_results(tmp_path: Path) -> Path:
    """KVM: one pair fails two rules; VMware: all pass (one after a failed rerun); VirtualBox:
    a skip, a pass and a pair that never reported; a real-platform run of KVM."""
    results = tmp_path / "results"
    results.mkdir()
    for source, dest in PAIRS:
        failed = (f"{R1}: changes.conf='release=1.2', .ucvm-new=None", f"{R7}: id: no such user")
        write_rebase_result(
            results,
            target="kvm",
            source=source,
            dest=dest,
            status="failed" if source == "1.0" else "passed",
            failed=failed if source == "1.0" else (),
            message="AssertionError: rules that failed:",
        )
        write_rebase_result(results, target="vmware", source=source, dest=dest)
    write_rebase_result(  # rerun above: the newer pass wins
        results,
        target="vmware",
        source="previous",
        dest="newest",
        status="broken",
        stop=T0 - timedelta(hours=1),
    )
    write_rebase_result(
        results,
        target="virtualbox",
        source="previous",
        dest="newest",
        status="skipped",
        message="Skipped: VBoxManage is not installed here",
    )
    write_rebase_result(results, target="virtualbox", source="1.0", dest="newest")
    write_rebase_result(
        results, target="kvm-remote", platform="KVM", source="previous", dest="newest",
        evidence="real", tier=3,
    )  # fmt: skip
    return results


def rebase_table(results: list[Result], **kwargs: object):
    kwargs.setdefault("versions", ["newest", "previous", "1.0", "devel"])
    kwargs.setdefault("known_issues", [])
    kwargs.setdefault("planned_rebase", PLAN)
    return build_table(results, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def table(rebase_results: Path):
    return rebase_table(read_results([rebase_results]), sources=[rebase_results])


def notes_of(table, platform: str) -> list[str]:
    cell = table.rebase_cell(platform)
    numbers = [*cell.notes, *(number for entry in cell.entries for number in entry.notes)]
    return [next(n.text for n in table.footnotes if n.number == number) for number in numbers]


def make_rebase(**changes: object) -> Result:
    base = Result(
        check="rebase", target="kvm", platform="KVM", version="newest", evidence="profile",
        tier=1, status="passed", message="", stop=T0, rebase_from="previous",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# --- the column ---------------------------------------------------------------------------------


def test_rebase_cell_symbols(table):
    symbols = {platform: table.rebase_cell(platform).symbol for platform in PLATFORMS}
    assert symbols["KVM"] == FAIL  # one pair failed; the real-platform pass is only a footnote
    assert symbols["VMware"] == PASS  # every pair passed, the newer rerun over the broken one
    assert symbols["VirtualBox"] == UNKNOWN  # a skip and a missing pair: never ✓
    assert {symbols[p] for p in PLATFORMS if p not in PLATFORM_OF.values()} == {UNKNOWN}
    assert table.rebase_cell("VMware").date == T0


def test_several_pairs_are_entries_in_matrix_order(table):
    assert [(e.label, e.symbol) for e in table.rebase_cell("KVM").entries] == [
        ("previous → newest", PASS),
        ("1.0 → newest", FAIL),  # two pairs to one version: kept apart, not a rerun
        ("newest → devel", PASS),
    ]
    assert [(e.label, e.symbol) for e in table.rebase_cell("VirtualBox").entries] == [
        ("previous → newest", UNKNOWN),
        ("1.0 → newest", PASS),
        ("newest → devel", UNKNOWN),
    ]
    assert table.rebase_cell("VirtualBox").entries[2].result is None


def test_each_failed_rule_is_a_footnote_naming_the_pair_and_the_rule(table):
    assert notes_of(table, "KVM") == [
        "real platform: kvm-remote · previous → newest: passed 2025-11-24",
        f"kvm · 1.0 → newest: {R1}: changes.conf='release=1.2', .ucvm-new=None",
        f"kvm · 1.0 → newest: {R7}: id: no such user",
    ]
    assert notes_of(table, "VMware") == []


def test_a_skip_gives_its_reason_and_a_missing_cell_says_so(table):
    assert notes_of(table, "VirtualBox") == [
        "VBoxManage is not installed here",
        "no result from virtualbox (in matrix.yaml, but it did not run)",
    ]
    assert notes_of(table, "Microsoft Hyper-V") == [NO_REBASE_CELL]
    assert table.rebase_cell("Microsoft Hyper-V").entries == ()


def test_never_a_pass_for_what_did_not_run_or_broke_a_rule():
    def symbol(results: list[Result], **kwargs: object) -> str:
        return rebase_table(results, **kwargs).rebase_cell("KVM").symbol

    only_kvm = [p for p in PLAN if p[0] == "kvm"]
    passes = [make_rebase(rebase_from=s, version=d) for s, d in PAIRS]
    assert symbol(passes, planned_rebase=only_kvm) == PASS
    assert symbol(passes[:2], planned_rebase=only_kvm) == UNKNOWN  # one pair did not report
    assert symbol([make_rebase(status="skipped")], planned_rebase=only_kvm[:1]) == UNKNOWN
    said_passed = make_rebase(failed_rules=("R9",))  # a rule failed, whatever the status says
    assert symbol([said_passed], planned_rebase=only_kvm[:1]) == FAIL
    assert notes_of(rebase_table([said_passed], planned_rebase=[]), "KVM") == [
        "kvm · previous → newest: rule R9 failed"  # no finding labelled: the rule's name
    ]
    vmware = make_rebase(target="vmware", platform="VMware")
    assert notes_of(rebase_table([vmware], planned_rebase=None), "KVM") == [NO_REBASE_RESULT]
    assert symbol([vmware], planned_rebase=None) == UNKNOWN
    assert symbol([], planned_rebase=[]) == UNKNOWN  # nothing planned: the column says so
    assert notes_of(rebase_table([], planned_rebase=[]), "KVM") == [NO_REBASE_CELL]
    assert not rebase_table([], planned_rebase=None).has_rebase  # nothing to say: no column


def test_a_failure_before_the_rules_names_its_phase_and_an_unlabelled_pair_shows():
    early = make_rebase(
        status="failed", failed_phase="network", message="AssertionError: no lease\nmore"
    )
    unlabelled = make_rebase(target="kvm-b", rebase_from=None, status="skipped", message="")
    table = rebase_table([early, unlabelled], planned_rebase=[])
    assert [e.label for e in table.rebase_cell("KVM").entries] == [
        "kvm previous → newest",  # two targets: each entry names its own
        "kvm-b (from not labelled) → newest",
    ]
    assert notes_of(table, "KVM") == [
        "kvm · previous → newest: failed in phase network: AssertionError: no lease",
        "skipped without a reason",
    ]


def test_only_the_boot_table_has_the_rebase_column_and_no_version_hides_a_pair(rebase_results):
    results = read_results([rebase_results])
    boot = rebase_table(results, versions=["newest"])  # devel is not a column: the pair shows
    assert boot.rebase_cell("KVM").entries[2].label == "newest → devel"
    assert not any("rebase" in text for text in boot.ignored)
    image_size = rebase_table(results, check="image_size")
    assert not image_size.has_rebase
    assert "rebase" not in render_markdown(image_size, link_base=Path("."))
    with pytest.raises(KeyError, match="no rebase column"):
        image_size.rebase_cell("KVM")


# --- rendering ----------------------------------------------------------------------------------


def last_markdown_cell(markdown: str, platform: str) -> str:
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {platform} |"))
    return row.removesuffix(" |").split(" | ")[-1]


def test_rebase_column_in_markdown(table, rebase_results, tmp_path):
    markdown = write_table(table, tmp_path / "reports")[0].read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| Platform |"))
    assert header.endswith("| contextualization · profile run here | rebase · profile run here |")
    number = {n.text: n.number for n in table.footnotes}
    console = "../results/kvm-{}-" + f"{int(T0.timestamp())}-console-attachment.txt"
    r1, r7 = (number[f"kvm · 1.0 → newest: {r}"] for r in (f"{R1}: changes.conf='release=1.2', "
              ".ucvm-new=None", f"{R7}: id: no such user"))  # fmt: skip
    real = number["real platform: kvm-remote · previous → newest: passed 2025-11-24"]
    assert last_markdown_cell(markdown, "KVM") == (
        f"✗ 2025-11-24 \\[{real}\\]"
        f"<br>✓ previous → newest [console.log]({console.format('previous-to-newest')})"
        f"<br>✗ 1.0 → newest [console.log]({console.format('1.0-to-newest')}) \\[{r1}\\]\\[{r7}\\]"
        f"<br>✓ newest → devel [console.log]({console.format('newest-to-devel')})"
    )
    missing = number["no result from virtualbox (in matrix.yaml, but it did not run)"]
    virtualbox = last_markdown_cell(markdown, "VirtualBox")
    assert virtualbox.startswith("? 2025-11-24<br>? previous → newest \\[")
    assert virtualbox.endswith(f"<br>? newest → devel \\[{missing}\\]")
    assert last_markdown_cell(markdown, "Xen") == f"? \\[{number[NO_REBASE_CELL]}\\]"
    assert f"{r1}. kvm · 1.0 → newest: R1 changed locally and upstream: " in markdown
    assert "rebase: each rebase cell of matrix.yaml (target, FROM → TO)" in markdown


def test_rebase_column_in_html(table, tmp_path):
    page = write_table(table, tmp_path / "reports")[1].read_text()
    assert '<th scope="col">rebase<br><small>profile run here</small></th>' in page
    kvm = page.split('<tr><th scope="row">KVM')[1].split("</tr>")[0]
    assert kvm.count("<td") == 4 * 2 + 2  # (version, kind) columns, context, rebase
    last = kvm.split("<td")[-1]
    assert last.startswith(' class="fail"><span class="symbol">✗</span> <time>2025-11-24</time>')
    assert '<span class="symbol fail">✗</span> 1.0 → newest <a href="../results/kvm-1.0-' in last
    assert 'title="AssertionError: rules that failed:"' in last
    virtualbox = page.split('<tr><th scope="row">VirtualBox')[1].split("</tr>")[0]
    missing = virtualbox.split("<td")[-1].split("<li>")[-1]  # no result: no link, no title
    assert missing.startswith('<span class="symbol unknown">?</span> newest → devel<sup>')


# --- the gate -----------------------------------------------------------------------------------

GATE_PLAN = [(target, source, dest, 1) for target, *_, source, dest in PLAN]


def judge(results: list[Result], planned_rebase=GATE_PLAN, **kwargs: object):
    kwargs.setdefault("required_tiers", [1])
    return verdict(
        results, allow_known_issues=False, known_issues=[], planned_rebase=planned_rebase,
        **kwargs,
    )  # type: ignore[arg-type]  # fmt: skip


def every_pass() -> list[Result]:
    return [
        make_rebase(target=target, platform=platform, rebase_from=source, version=dest)
        for target, platform, _, source, dest in PLAN
    ]


def test_the_gate_passes_when_every_planned_rebase_cell_passed():
    passed = judge(every_pass())
    assert passed.passed, passed
    assert passed.reasons == [f"all {len(PLAN)} result(s) of required tier(s) 1 passed"]


def test_the_gate_fails_on_a_failed_tier_one_rebase_cell_naming_its_pair():
    results = every_pass()
    results[1] = dataclasses.replace(
        results[1], status="failed", message="AssertionError: rules that failed:\nR1 ..."
    )
    failed = judge(results)
    assert not failed.passed
    assert failed.reasons == [
        "kvm 1.0 → newest rebase (tier 1, KVM, profile): failed: AssertionError: rules that failed:"
    ]
    skipped = every_pass()
    skipped[0] = dataclasses.replace(skipped[0], status="skipped", message="Skipped: no VT-x")
    assert "kvm previous → newest rebase (tier 1, KVM, profile): did not run (no VT-x)" in str(
        judge(skipped)
    )


def test_the_gate_fails_on_a_missing_tier_one_rebase_cell_and_only_tier_one():
    missing = judge(every_pass()[1:])
    assert not missing.passed
    assert missing.reasons == [
        "kvm · previous → newest rebase (tier 1): no result; a required cell that did not "
        "report is not a pass"
    ]
    lower = [(target, source, dest, 2) for target, source, dest, _ in GATE_PLAN[:1]]
    assert judge(every_pass()[1:], planned_rebase=GATE_PLAN[1:] + lower).passed


def test_a_rebase_result_does_not_stand_in_for_a_boot_cell_nor_the_other_way():
    boot = make_rebase(check="boot", rebase_from=None)
    no_boot = judge(every_pass(), planned=[("kvm", "newest", 1)])
    assert "kvm · newest (tier 1): no result" in str(no_boot)
    no_rebase = judge([boot], planned=[("kvm", "newest", 1)], planned_rebase=GATE_PLAN[:1])
    assert "kvm · previous → newest rebase (tier 1): no result" in str(no_rebase)
    assert judge([boot, every_pass()[0]], planned=[("kvm", "newest", 1)],
                 planned_rebase=GATE_PLAN[:1]).passed  # fmt: skip


def test_publish_judges_the_rebase_results_of_a_directory(rebase_results):
    judged = publish.judge(
        [rebase_results],
        known_issues_path=REPO / "known-issues.yaml",
        required_tiers=[1],
        allow_known_issues=True,
        planned=[],
        planned_rebase=GATE_PLAN,
    )
    assert not judged.passed
    text = str(judged)
    assert "kvm 1.0 → newest rebase (tier 1, KVM, profile): failed" in text
    assert "virtualbox previous → newest rebase (tier 1, VirtualBox, profile): did not run" in text
    assert "virtualbox · newest → devel rebase (tier 1): no result" in text
    assert "vmware" not in text  # the broken run was rerun and passed


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    """A copy of matrix.yaml and known-issues.yaml whose reports go to tmp_path/out."""
    text = (REPO / "matrix.yaml").read_text()
    (tmp_path / "matrix.yaml").write_text(re.sub(r"(?m)^(\s+reports:).*$", r"\1 out", text))
    shutil.copy(REPO / "known-issues.yaml", tmp_path)
    return tmp_path


def test_ucvm_lab_report_renders_the_rebase_column_from_a_results_dir(lab_dir, tmp_path):
    results = tmp_path / "by-hand"
    results.mkdir()
    write_rebase_result(results, target="kvm", source="previous", dest="newest")
    write_rebase_result(
        results, target="kvm", source="1.0", dest="newest", status="failed", failed=(R7,)
    )
    report = ucvm_lab("--matrix", str(lab_dir / "matrix.yaml"), "report", str(results))
    assert report.returncode == 0, report.stdout + report.stderr
    markdown = (lab_dir / "out" / "support-table.md").read_text()
    assert "| rebase · profile run here |" in markdown
    kvm = last_markdown_cell(markdown, "KVM")  # matrix.yaml's pairs, in its order
    assert re.fullmatch(
        r"✗ 2025-11-24<br>✓ previous → newest \[console\.log\]\([^)]+\)"
        r"<br>✗ 1\.0 → newest \[console\.log\]\([^)]+\) \\\[(\d+)\\\]"
        r"<br>\? newest → devel \\\[(\d+)\\\]",
        kvm,
    ), kvm
    assert f"kvm · 1.0 → newest: {R7}" in markdown
    assert "no result from vmware (in matrix.yaml, but it did not run)" in markdown
    assert last_markdown_cell(markdown, "Microsoft Hyper-V").startswith("? \\[")
    assert f". {NO_REBASE_CELL}" in markdown
    page = (lab_dir / "out" / "support-table.html").read_text()
    assert '<th scope="col">rebase<br><small>profile run here</small></th>' in page

    gate = ucvm_lab("--matrix", str(lab_dir / "matrix.yaml"), "gate", str(results))
    assert gate.returncode == 1
    assert "kvm 1.0 → newest rebase (tier 1, KVM, profile): failed" in gate.stdout
    assert "vmware · previous → newest rebase (tier 1): no result" in gate.stdout
