"""lab.evidence: the labels the suites write are the labels the report reads, on the wire."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lab import evidence
from lab.evidence import (
    CONSOLE_ATTACHMENT,
    EVIDENCE,
    PLATFORM_PROFILES,
    PLATFORMS,
    Label,
    boot_labels,
    cell_labels,
    context_labels,
    incomplete_labels,
    read_results,
    rebase_labels,
)
from lab.targets.profiles import PROFILES

T0 = datetime(2025, 11, 24, 12, 0, tzinfo=UTC)


def test_every_profile_names_a_platform_of_the_vocabulary_and_each_platform_its_profile():
    assert {name: profile.platform for name, profile in PROFILES.items()} == {
        profile: platform for platform, profile in PLATFORM_PROFILES.items()
    }
    assert len(PLATFORMS) == len(set(PLATFORMS)) == len(PROFILES)


def test_the_labels_on_the_wire_are_the_ucvm_names():
    assert cell_labels(
        check="context",
        target="openstack",
        platform="OpenStack",
        version="newest",
        evidence="profile",
        tier=1,
        channel="config-drive",
    ) == {
        "ucvm.check": "context",
        "ucvm.target": "openstack",
        "ucvm.platform": "OpenStack",
        "ucvm.version": "newest",
        "ucvm.evidence": "profile",
        "ucvm.tier": "1",
        "ucvm.channel": "config-drive",
    }
    without_channel = cell_labels(
        check="boot", target="kvm", platform="KVM", version="1.0", evidence="real", tier=3
    )
    assert "ucvm.channel" not in without_channel and without_channel["ucvm.tier"] == "3"
    assert boot_labels(accel="kvm", failed_phase=None) == {"ucvm.accel": "kvm"}
    assert boot_labels(accel="tcg", failed_phase="network") == {
        "ucvm.accel": "tcg",
        "ucvm.failed_phase": "network",
    }
    assert context_labels(took_effect=["channel", "cloud_init"], missing=[]) == {
        "ucvm.context_took_effect": "channel,cloud_init",
        "ucvm.context_missing": "",
    }
    assert CONSOLE_ATTACHMENT == "console.log"
    assert {label.key for label in Label} == {
        "ucvm.check", "ucvm.target", "ucvm.platform", "ucvm.version", "ucvm.evidence",
        "ucvm.tier", "ucvm.channel", "ucvm.accel", "ucvm.failed_phase",
        "ucvm.context_took_effect", "ucvm.context_missing",
        "ucvm.rebase_from", "ucvm.rebase_failed_rules", "ucvm.rebase_failures",
        "ucvm.side", "ucvm.round", "ucvm.incomplete",
    }  # fmt: skip


def test_a_gate_runs_labels_read_back_with_side_round_and_incompleteness(tmp_path: Path):
    labels = cell_labels(
        check="boot", target="kvm", platform="KVM", version="1.3", evidence="profile",
        tier=1, side="candidate", round_=2,
    ) | incomplete_labels("libvirtd died\nmore")  # fmt: skip
    assert labels["ucvm.side"] == "candidate" and labels["ucvm.round"] == "2"
    assert labels["ucvm.incomplete"] == "libvirtd died"
    with pytest.raises(
        ValueError, match=r"ucvm\.side='both': expected one of: candidate, baseline"
    ):
        cell_labels(check="boot", target="kvm", platform="KVM", version="1.3",
                    evidence="profile", tier=1, side="both")  # fmt: skip
    result = {
        "name": "t", "status": "broken", "stop": int(T0.timestamp() * 1000),
        "labels": [{"name": name, "value": value} for name, value in labels.items()],
    }  # fmt: skip
    (tmp_path / "a-result.json").write_text(json.dumps(result))
    [read] = read_results([tmp_path])
    assert (read.side, read.round, read.incomplete) == ("candidate", 2, "libvirtd died")
    second = dict(result, labels=[*result["labels"], {"name": "ucvm.round", "value": "x"}])
    (tmp_path / "a-result.json").write_text(json.dumps(second))
    with pytest.raises(evidence.ResultsError, match=r"ucvm\.round='x': expected 0, 1, 2"):
        read_results([tmp_path])


def test_rebase_labels_take_the_rule_names_and_keep_what_each_rule_found():
    found = "R8 no orphaned files: /home/alice/notes\n/var/lib/alice-data/db"
    assert rebase_labels("previous", ["R1", found]) == {
        "ucvm.rebase_from": "previous",
        "ucvm.rebase_failed_rules": "R1,R8",
        "ucvm.rebase_failures": "R8 no orphaned files: /home/alice/notes",  # its first line
    }
    assert rebase_labels("1.0", []) == {
        "ucvm.rebase_from": "1.0",
        "ucvm.rebase_failed_rules": "",
    }
    long = "R9 " + "x" * 1000
    clipped = rebase_labels("newest", [long])["ucvm.rebase_failures"]
    assert len(clipped) == evidence.RULE_FAILURE_CLIP and clipped.endswith("…")
    assert clipped.startswith("R9 xx")
    with pytest.raises(ValueError, match="an empty name"):
        rebase_labels("newest", ["R1", " "])
    with pytest.raises(ValueError, match="an empty name"):
        rebase_labels("", [])
    rebase_cell = cell_labels(
        check="rebase", target="kvm", platform="KVM", version="newest", evidence="profile",
        tier=1, rebase_from="previous",
    )  # fmt: skip
    assert rebase_cell["ucvm.rebase_from"] == "previous"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"platform": "kvm"}, r"label ucvm\.platform='kvm': expected one of: VirtualBox, VMware"),
        ({"evidence": "emulated"}, r"label ucvm\.evidence='emulated': expected one of: profile"),
    ],
)
def test_a_label_the_report_would_refuse_is_refused_when_written(changes, expected):
    labels = dict(
        check="boot", target="kvm", platform="KVM", version="newest", evidence="profile", tier=1
    )
    with pytest.raises(ValueError, match=expected):
        cell_labels(**{**labels, **changes})  # type: ignore[arg-type]


def test_what_the_suites_write_the_report_reads_back(tmp_path: Path):
    labels = {
        **cell_labels(
            check="context",
            target="vmware",
            platform="VMware",
            version="previous",
            evidence="profile",
            tier=2,
            channel="ovf",
        ),
        **boot_labels(accel="tcg", failed_phase="mount-os"),
        **context_labels(took_effect=["channel", "loader_hostname"], missing=["runcmd"]),
    }
    (tmp_path / "console.txt").write_text("ucvm: phase=start t=0.1\n")
    result = {
        "name": "test_contextualizes_on_channel[vmware-previous-ovf]",
        "status": "failed",
        "statusDetails": {"message": "did not take effect: runcmd"},
        "stop": int(T0.timestamp() * 1000),
        "attachments": [{"name": CONSOLE_ATTACHMENT, "source": "console.txt"}],
        "labels": [{"name": "suite", "value": "test_context"}]
        + [{"name": name, "value": value} for name, value in labels.items()],
    }
    (tmp_path / "a-result.json").write_text(json.dumps(result))
    [read] = read_results([tmp_path])
    assert (read.check, read.target, read.platform, read.version) == (
        "context",
        "vmware",
        "VMware",
        "previous",
    )
    assert (read.evidence, read.tier, read.channel, read.accel) == ("profile", 2, "ovf", "tcg")
    assert (read.failed_phase, read.took_effect, read.missing) == (
        "mount-os",
        ("channel", "loader_hostname"),
        ("runcmd",),
    )
    assert read.status == "failed" and read.stop == T0
    assert read.console == tmp_path / "console.txt"
    assert (read.rebase_from, read.failed_rules, read.rule_failures) == (None, (), ())


def test_a_rebase_result_reads_back_its_pair_and_failed_rules(tmp_path: Path):
    failed = [
        "R1 changed locally and upstream: kept, upstream's as .ucvm-new: .ucvm-new=None",
        "R13 the boot loader (0.1 -> 0.2): a two-phase kexec boot exactly when it changes: []",
    ]
    labels = {
        **cell_labels(
            check="rebase", target="kvm", platform="KVM", version="newest", evidence="profile",
            tier=1, rebase_from="1.0",
        ),
        **rebase_labels("1.0", failed),
    }  # fmt: skip
    result = {
        "name": "test_rebase_carries_local_changes[kvm-1.0-to-newest]",
        "status": "failed",
        "stop": int(T0.timestamp() * 1000),
        "labels": [{"name": name, "value": value} for name, value in labels.items()],
    }
    (tmp_path / "r-result.json").write_text(json.dumps(result))
    [read] = read_results([tmp_path])
    assert (read.check, read.rebase_from, read.version) == ("rebase", "1.0", "newest")
    assert read.failed_rules == ("R1", "R13")
    assert read.rule_failures == tuple(failed)
    assert read.pair == "1.0 → newest"
    assert read.describe() == "kvm 1.0 → newest rebase"


def test_the_evidence_kinds_are_the_matrix_targets_kinds():
    assert EVIDENCE == ("profile", "real")
    assert set(evidence.EVIDENCE_TITLES) == set(EVIDENCE)


def imported_modules(path: Path) -> set[str]:
    """The absolute modules a source file imports (``from lab import x`` gives lab and lab.x)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def of_the_lab(names: set[str], *packages: str) -> set[str]:
    return {name for name in names for p in packages if name == p or name.startswith(f"{p}.")}


def test_the_vocabulary_imports_nothing_of_the_lab():
    assert of_the_lab(imported_modules(Path(evidence.__file__)), "lab") == set()


def test_the_report_imports_neither_the_matrix_nor_the_drivers():
    report = Path(evidence.__file__).parent / "report"
    sources = [*sorted(report.glob("*.py")), report.parent / "known_issues.py"]
    assert len(sources) >= 6
    for source in sources:
        imported = imported_modules(source)
        assert of_the_lab(imported, "lab.matrix", "lab.targets", "lab.cli") == set(), source
    assert of_the_lab(imported_modules(report.parent / "known_issues.py"), "lab.report") == set()


def test_a_results_figures_come_from_its_boot_record(tmp_path: Path):
    """ready_s is the host's time to `ready`, each phase its guest seconds since the marker
    before, the ready marker's counters and the suite's measurements are figures."""
    from lab.observe import record_from_console

    console = (
        "ucvm: phase=start t=0.50\nucvm: phase=repo t=2.00\n"
        'ucvm: context step=cloud-init status=warning detail="x"\n'
        "ucvm: phase=ready t=9.50 os=1.2 cache_bytes=4096 fetched_bytes=8192 units_failed=1\n"
    )
    timeline = [(1.0 + i, line) for i, line in enumerate(console.splitlines())]
    record = record_from_console(console, timeline)
    record.measurements["cache_server_image_bytes"] = 8192
    (tmp_path / "record.json").write_text(record.to_json())
    result = {
        "name": "test_boots[kvm-newest]",
        "status": "passed",
        "stop": int(T0.timestamp() * 1000),
        "attachments": [{"name": evidence.BOOT_RECORD_ATTACHMENT, "source": "record.json"}],
        "labels": [
            {"name": name, "value": value}
            for name, value in cell_labels(
                check="boot", target="kvm", platform="KVM", version="newest",
                evidence="profile", tier=1,
            ).items()
        ],
    }  # fmt: skip
    (tmp_path / "a-result.json").write_text(json.dumps(result))
    [read] = read_results([tmp_path])
    assert read.figures == {
        "phase_s.start": 0.5, "phase_s.repo": 1.5, "phase_s.ready": 7.5,
        "ready_s": 4.0, "guest_ready_s": 9.5,
        "cache_bytes": 4096, "fetched_bytes": 8192, "units_failed": 1,
        "cloud_init_warnings": 1, "cache_server_image_bytes": 8192,
    }  # fmt: skip
    (tmp_path / "record.json").write_text("{not json")
    with pytest.raises(evidence.ResultsError, match="unreadable boot record"):
        read_results([tmp_path])


def test_a_result_broken_by_the_infrastructure_is_incomplete(tmp_path: Path):
    """allure-pytest writes a broken test's message as `module.Class: text`: the lab's
    InfrastructureError makes the result incomplete; any other exception leaves it broken."""
    labels = cell_labels(
        check="boot", target="kvm", platform="KVM", version="1.2", evidence="profile", tier=1
    )
    cases = {
        "a": ("lab.targets.base.InfrastructureError: no libvirt\nmore", "broken", "no libvirt"),
        "b": ("lab.targets.base.TargetError: not running", "broken", None),
        "c": ("lab.targets.base.InfrastructureError: x", "failed", None),
    }
    for name, (message, status, _) in cases.items():
        result = {
            "name": name, "status": status, "stop": int(T0.timestamp() * 1000),
            "fullName": f"suites.boot.test_boot#{name}",
            "statusDetails": {"message": message},
            "labels": [{"name": k, "value": v} for k, v in labels.items()],
        }  # fmt: skip
        (tmp_path / f"{name}-result.json").write_text(json.dumps(result))
    results = read_results([tmp_path])
    read = {r.message: r.incomplete for r in results}
    assert read == {message: expected for message, _, expected in cases.values()}
    assert sorted(r.test_id for r in results) == [
        f"suites/boot/test_boot.py::{name}" for name in "abc"
    ]
