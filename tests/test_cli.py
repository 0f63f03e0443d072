"""The ucvm-lab command line, run as a user runs it."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import matrix
from lab.cli import chosen_targets
from lab.evidence import PLATFORMS
from lab.run import Run
from lab.targets.registry import load_matrix
from tests.commands import ucvm_lab

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RESULTS = REPO / "tests" / "data" / "allure-results-sample"


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    """A copy of matrix.yaml and known-issues.yaml whose reports go to tmp_path."""
    text = (REPO / "matrix.yaml").read_text()
    (tmp_path / "matrix.yaml").write_text(re.sub(r"(?m)^(\s+reports:).*$", r"\1 out", text))
    shutil.copy(REPO / "known-issues.yaml", tmp_path)
    return tmp_path


def test_targets_lists_every_target_with_availability_and_reason() -> None:
    listing = ucvm_lab("targets")
    assert listing.returncode == 0, listing.stderr
    rows = {
        line.split("│")[1].strip(): line
        for line in listing.stdout.splitlines()
        if line.startswith("│") and "target" not in line
    }
    assert {
        "kvm",
        "virtualbox",
        "vmware",
        "hyperv",
        "ec2",
        "gce",
        "xen",
        "parallels",
        "kvm-remote",
    } <= set(rows)
    assert "│ yes " in rows["kvm"] and "libvirt qemu:///system" in rows["kvm"]
    assert "│ no " in rows["xen"] and "no Xen" in rows["xen"]
    assert "│ no " in rows["kvm-remote"] and "UCVM_KVM_REMOTE_URI" in rows["kvm-remote"]


def test_an_invalid_matrix_is_refused_before_anything_runs(lab_dir: Path) -> None:
    matrix = lab_dir / "matrix.yaml"
    matrix.write_text(matrix.read_text().replace("profile: vmware,", "profile: vmwar,"))
    result = ucvm_lab("--matrix", str(matrix), "targets")
    assert result.returncode == 2
    assert re.search(r"matrix.yaml:\d+:\d+: targets\[3\].*unknown profile 'vmwar'", result.stderr)


def test_report_and_gate_from_results(lab_dir: Path) -> None:
    report = ucvm_lab("--matrix", str(lab_dir / "matrix.yaml"), "report", str(SAMPLE_RESULTS))
    assert report.returncode == 0, report.stderr
    table = (lab_dir / "out" / "support-table.md").read_text()
    rows = [table.index(f"| {platform} |") for platform in PLATFORMS]  # each, in this order
    assert rows == sorted(rows)
    assert PLATFORMS == (  # the table's rows, pinned here: lab.evidence is what is under test
        "VirtualBox", "VMware", "KVM", "Xen", "Microsoft Hyper-V", "Parallels", "OpenStack",
        "OpenNebula", "Amazon EC2", "Google Compute Engine",
    )  # fmt: skip
    assert (lab_dir / "out" / "support-table.html").exists()
    assert (lab_dir / "out" / "allure-report" / "index.html").exists()


def test_gate_fails_when_a_planned_tier_one_cell_has_no_result(lab_dir: Path) -> None:
    gate = ucvm_lab("--matrix", str(lab_dir / "matrix.yaml"), "gate", str(SAMPLE_RESULTS))
    assert gate.returncode == 1
    assert "gce · newest (tier 1): no result" in gate.stdout  # the sample has no gce result


def test_gate_fails_when_a_tier_one_cell_fails(lab_dir: Path) -> None:
    matrix = lab_dir / "matrix.yaml"
    without = ("openstack", "opennebula", "hyperv", "hyperv-vhd", "gce")  # not in the sample
    other_versions = r'  - (previous|"1\.0"|devel)(\s|$)'  # the sample boots `newest` only
    matrix.write_text(
        "".join(
            line
            for line in re.sub(
                r"(?ms)^  rebase:.*?(?=^targets:)", "\n", matrix.read_text()
            ).splitlines(keepends=True)
            if not re.match(rf"\s+- {{name: ({'|'.join(without)}),", line)
            and not re.match(other_versions, line)
        ).replace("versions: [previous]", "versions: [newest]")  # the context check's
    )
    passing = ucvm_lab("--matrix", str(matrix), "gate", str(SAMPLE_RESULTS))
    assert passing.returncode == 0 and "PASSED" in passing.stdout, passing.stdout

    results = shutil.copytree(SAMPLE_RESULTS, lab_dir / "results")
    flipped = flip_first_tier_one_pass(results)
    failing = ucvm_lab("--matrix", str(matrix), "gate", str(results))
    assert failing.returncode == 1
    assert "FAILED" in failing.stdout and flipped in failing.stdout


def flip_first_tier_one_pass(results: Path) -> str:
    """Fail every boot result of the first tier-1 target that passed; returns its name."""
    chosen = None
    for path in sorted(results.glob("*-result.json")):
        data = json.loads(path.read_text())
        labels = {label["name"]: label["value"] for label in data.get("labels", [])}
        if labels.get("ucvm.tier") != "1" or labels.get("ucvm.check") != "boot":
            continue
        if chosen is None and data["status"] == "passed":
            chosen = labels["ucvm.target"]
        if labels["ucvm.target"] == chosen:
            data["status"] = "failed"
            path.write_text(json.dumps(data))
    assert chosen, "the sample has no passed tier-1 boot result"
    return chosen


def test_sweep_runs_and_reports(tmp_path: Path) -> None:
    matrix = tmp_path / "matrix.yaml"
    text = (REPO / "matrix.yaml").read_text()
    matrix.write_text(re.sub(r"(?m)^(\s+run_root:).*$", rf"\1 {tmp_path / 'runs'}", text))
    shutil.copy(REPO / "known-issues.yaml", tmp_path)
    run = Run("0101000000dead", tmp_path / "runs").hold()
    assert run._lock is not None
    run._lock.close()  # nobody holds its lock: the run is dead
    (tmp_path / "runs" / "0101000000beef").mkdir()  # a run's name, but not the lab's marker

    result = ucvm_lab("--matrix", str(matrix), "sweep")
    assert result.returncode == 0, result.stderr
    assert f"files {run.dir}" in result.stdout
    assert not run.dir.exists()
    assert f"left alone: {tmp_path / 'runs' / '0101000000beef'}: not a ucvm-lab run" in (
        result.stdout
    )
    assert (tmp_path / "runs" / "0101000000beef").is_dir()


# --------------------------------------------------------------------------- run: shard, targets


@pytest.fixture(scope="module")
def real_matrix() -> matrix.Matrix:
    return load_matrix(REPO / "matrix.yaml")


@pytest.mark.parametrize("shard", ["abc", "1", "0/3", "4/3", "1/0", "-1/3", "1/3/2", "a/b", ""])
def test_a_bad_shard_is_refused_by_the_parser(shard: str) -> None:
    result = ucvm_lab("run", f"--shard={shard}")
    assert result.returncode == 2, result.stdout
    assert "argument --shard: " in result.stderr and "expected K/N" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_shard_runs_nothing(real_matrix: matrix.Matrix) -> None:
    count = len(real_matrix.targets)
    result = ucvm_lab("run", "--shard", f"{count + 1}/{count + 1}")
    assert result.returncode == 0, result.stderr
    assert "is empty: nothing to run" in result.stdout
    assert "pytest" not in result.stdout  # no suite was started, let alone the whole matrix


def test_shards_split_the_targets_without_overlap(real_matrix: matrix.Matrix) -> None:
    names = [t.name for t in real_matrix.targets]
    for n in (1, 2, 3, len(names), len(names) + 1):
        shards = [
            chosen_targets(argparse.Namespace(targets="", shard=(k, n)), real_matrix)
            for k in range(1, n + 1)
        ]
        assert sorted(name for shard in shards for name in shard) == sorted(names), n
    first = chosen_targets(argparse.Namespace(targets="kvm,xen,gce", shard=(1, 2)), real_matrix)
    assert first == ["kvm", "xen"]  # a shard of the selection, in the selection's order


@pytest.mark.parametrize("targets", [",", ",,,", " ", " , "])
def test_a_selection_that_names_no_target_is_refused(
    real_matrix: matrix.Matrix, targets: str
) -> None:
    """Not "every target": called directly, so that a regression cannot start the matrix."""
    with pytest.raises(matrix.MatrixError, match="names no target"):
        chosen_targets(argparse.Namespace(targets=targets, shard=None), real_matrix)


@pytest.mark.parametrize("workers", ["0", "-1", "two", "1.5", ""])
def test_a_bad_worker_count_is_refused_by_the_parser(workers: str) -> None:
    result = ucvm_lab("run", f"--workers={workers}")
    assert result.returncode == 2, result.stdout
    assert "argument -n/--workers: " in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("limit", ["nan", "inf", "-5", "0", "soon"])
def test_a_bad_solver_time_limit_is_refused_by_the_parser(limit: str) -> None:
    result = ucvm_lab("solve", "list", "--index", "x", "-o", "out", f"--time-limit={limit}")
    assert result.returncode == 2, result.stdout
    assert "argument --time-limit: " in result.stderr and "Traceback" not in result.stderr
    assert f"'{limit}': expected a number of seconds > 0, e.g. 120" in result.stderr


@pytest.mark.parametrize("ratio", ["1", "0.8", "nan", "inf", "lots"])
def test_a_history_ratio_not_above_one_is_refused_by_the_parser(ratio: str) -> None:
    result = ucvm_lab("history", f"--ratio={ratio}")
    assert result.returncode == 2, result.stdout
    assert f"argument --ratio: '{ratio}': expected a number > 1, e.g. 1.25 (by 25%)" in (
        result.stderr
    )


def test_unknown_targets_are_refused_with_the_known_ones() -> None:
    result = ucvm_lab("run", "--targets", "kvm,kvmm")
    assert result.returncode == 2
    assert "unknown target 'kvmm'; known targets: kvm, openstack" in result.stderr


PACKAGES = """\
Package: base-files
Version: 12.4
Architecture: amd64
Essential: yes
Filename: pool/b/base-files_12.4_amd64.deb
SHA256: {zero}

Package: app
Version: 2.0
Architecture: amd64
Depends: libx (>= 2)
Filename: pool/a/app_2.0_amd64.deb
SHA256: {zero}

Package: app
Version: 1.0
Architecture: amd64
Depends: libx
Filename: pool/a/app_1.0_amd64.deb
SHA256: {zero}

Package: libx
Version: 2.0
Architecture: amd64
Filename: pool/l/libx_2.0_amd64.deb
SHA256: {zero}

Package: libx
Version: 1.0
Architecture: amd64
Filename: pool/l/libx_1.0_amd64.deb
SHA256: {zero}

Package: old-tool
Version: 1.0
Architecture: amd64
Depends: libx (<< 2)
Filename: pool/o/old-tool_1.0_amd64.deb
SHA256: {zero}

Package: blocker
Version: 1.0
Architecture: amd64
Conflicts: libx
Filename: pool/b/blocker_1.0_amd64.deb
SHA256: {zero}
""".format(zero="0" * 64)


def solve(tmp_path: Path, listing: str, out: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "Packages").write_text(PACKAGES)
    (tmp_path / f"{out}.list").write_text(listing)
    return ucvm_lab(
        "solve",
        str(tmp_path / f"{out}.list"),
        "--index",
        str(tmp_path / "Packages"),
        "-o",
        str(tmp_path / out),
        cwd=tmp_path,
    )


def test_solve_writes_the_closed_list_and_the_meta_package(tmp_path: Path) -> None:
    result = solve(tmp_path, "app\n", "new")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dose-distcheck: 0 of 4 broken" in result.stdout  # 3 packages + cernvm-system
    listed = (tmp_path / "new" / "closed-list.txt").read_text().splitlines()
    assert [line.split()[:2] for line in listed] == [
        ["app", "2.0"],
        ["base-files", "12.4"],
        ["libx", "2.0"],
    ]
    document = json.loads((tmp_path / "new" / "closed-list.json").read_text())
    assert document["engine"] == "highs" and len(document["packages"]) == 3
    assert (tmp_path / "new" / "cernvm-system_1.0_all.deb").exists()

    older = solve(tmp_path, "app\nold-tool\n", "old")
    assert older.returncode == 0, older.stdout
    change = ucvm_lab(
        "diff",
        str(tmp_path / "old" / "closed-list.json"),
        str(tmp_path / "new" / "closed-list.json"),
    )
    assert change.stdout.split("\n")[:3] == [
        "- old-tool 1.0",
        "↑ app 1.0 -> 2.0",
        "↑ libx 1.0 -> 2.0",
    ]


def test_solve_explains_an_infeasible_list(tmp_path: Path) -> None:
    result = solve(tmp_path, "app\nblocker\n", "bad")
    assert result.returncode == 1
    assert "cannot be installed together: app (line 1), blocker (line 2)" in result.stdout
    assert (tmp_path / "bad" / "explanation.txt").read_text().startswith("cannot be installed")


def test_solve_refuses_a_bad_shopping_list(tmp_path: Path) -> None:
    result = solve(tmp_path, "app\nap\nlibx=3.0\n", "refused")
    assert result.returncode == 2
    assert "refused.list:2: package 'ap'" in result.stderr
    assert "refused.list:3: package 'libx': version 3.0 is not in the index(es)" in result.stderr
    assert not (tmp_path / "refused").exists()
