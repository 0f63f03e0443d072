"""`ucvm-lab gate --candidate` in real guests: each outcome of the gate proven by a run of the
command, candidate and baseline booted side by side (issue 13, "Done when").

The candidates are releases.yaml's gate fixtures: 1.3-rc0 is 1.2 that fails a unit on the
virtualbox profile (its e1000 NIC); 1.3-rc breaks it too and reaches `ready` 20 s later. Each
test publishes what it needs into its own store repository (``release candidate``), so the
real store and its prod branch are never touched. About 15 min of TCG: the nightly's, and by
hand `.venv/bin/python -m pytest tests/test_gate_run.py`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import libvirt
import pytest

from lab.cli.gate import RESULTS, VERDICTS
from lab.evidence import read_results
from tests.commands import REPO

pytestmark = [pytest.mark.boot, pytest.mark.nightly, pytest.mark.xdist_group("gate-run")]

GATE_TIMEOUT_S = 3600


@dataclass
class GateLab:
    """A matrix copy whose reports and known issues are the test's, and a store repository."""

    root: Path

    @property
    def matrix(self) -> Path:
        return self.root / "matrix.yaml"

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def known_issues(self) -> Path:
        return self.root / "known-issues.yaml"

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(REPO / ".venv/bin/python"), "-m", "lab.cli", "--matrix", str(self.matrix),
             *args, "--repo", str(self.repo)],
            cwd=REPO, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        return done

    def gate(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("gate", *args, "--checks", "boot", timeout=GATE_TIMEOUT_S)

    def verdict(self, tag: str) -> dict[str, object]:
        return json.loads((self.repo / VERDICTS / f"{tag}.json").read_text())


@pytest.fixture(scope="module")
def gate_lab(tmp_path_factory: pytest.TempPathFactory) -> GateLab:
    """1.2 promoted to prod (forced: the first release has no baseline), 1.3-rc0 promoted to
    branch rc0 (forced), 1.3-rc a candidate on testing."""
    lab = GateLab(tmp_path_factory.mktemp("gate-run"))
    text = (REPO / "matrix.yaml").read_text()
    lab.matrix.write_text(re.sub(r"(?m)^(\s+reports:).*$", r"\1 reports", text))
    shutil.copy(REPO / "known-issues.yaml", lab.known_issues)
    for tag in ("1.2", "1.3-rc0", "1.3-rc"):
        done = lab.cli("release", "candidate", tag)
        assert done.returncode == 0, done.stdout + done.stderr
    for tag, branch in (("1.2", "prod"), ("1.3-rc0", "rc0")):
        done = lab.cli("release", "promote", tag, "--to", branch, "--force")
        assert done.returncode == 0, done.stdout + done.stderr
    return lab


def test_a_slower_candidate_that_breaks_a_profile_is_refused(gate_lab: GateLab) -> None:
    """1.3-rc against prod's 1.2 on kvm and virtualbox, 2 boots per side: kvm passes on both
    sides but its time to ready is over budget; virtualbox is a REGRESSION. Exit 1, a failed
    verdict, and promote refuses it."""
    done = gate_lab.gate("--candidate", "1.3-rc", "--targets", "kvm,virtualbox", "--boots", "2")
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "gate: FAILED: candidate 1.3-rc against baseline 1.2" in said
    assert re.search(r"virtualbox boot: REGRESSION \(failed", said), said
    over = re.search(r"kvm boot ready_s: candidate ([\d.]+) .* vs baseline ([\d.]+) .*ratio "
                     r"([\d.]+) \(budget 1\.25, over budget\)", said)  # fmt: skip
    assert over, said
    candidate_s, baseline_s, ratio = map(float, over.groups())
    assert candidate_s - baseline_s > 15 and ratio > 1.25  # the 20 s the release sleeps
    verdict = gate_lab.verdict("1.3-rc")
    assert verdict["passed"] is False and verdict["exit_code"] == 1
    refused = gate_lab.cli("release", "promote", "1.3-rc", "--to", "prod")
    assert refused.returncode == 1 and "did not pass" in refused.stderr


def write_waiver(lab: GateLab, expires: date) -> None:
    lab.known_issues.write_text(
        "- platform: VirtualBox\n  target: virtualbox\n  check: boot\n"
        "  summary: systemd-sysctl fails on e1000 (a gate test's waiver)\n"
        f"  link: https://example.org/ucvm/42\n  expires: {expires.isoformat()}\n"
    )


def test_a_failure_of_the_baseline_too_is_alwaysfail_and_passes_only_while_waived(
    gate_lab: GateLab,
) -> None:
    """1.3-rc against 1.3-rc0 on virtualbox: both fail, ALWAYSFAIL, exit 1. Judged again with a
    waiver of that scope: exit 0, listed as waived; with the waiver expired: exit 1 again."""
    args = ("--candidate", "1.3-rc", "--baseline", "1.3-rc0", "--targets", "virtualbox",
            "--boots", "1")  # fmt: skip
    done = gate_lab.gate(*args)
    said = done.stdout + done.stderr
    assert done.returncode == 1 and "virtualbox boot: ALWAYSFAIL" in said, said

    write_waiver(gate_lab, date.today() + timedelta(days=30))
    waived = gate_lab.gate(*args, "--no-run")
    assert waived.returncode == 0, waived.stdout + waived.stderr
    assert "waived: virtualbox boot: ALWAYSFAIL by known issue: systemd-sysctl fails" in (
        waived.stdout
    )
    assert gate_lab.verdict("1.3-rc")["passed"] is True

    write_waiver(gate_lab, date.today())  # expires today: no longer waives
    expired = gate_lab.gate(*args, "--no-run")
    assert expired.returncode == 1 and "waived:" not in expired.stdout, expired.stdout
    assert gate_lab.verdict("1.3-rc")["passed"] is False


def libvirtd_running() -> bool:
    return subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode == 0


def start_libvirtd() -> None:
    if not libvirtd_running():
        subprocess.run(["libvirtd", "-d"], check=True)
    for _ in range(100):
        if Path("/run/libvirt/libvirt-sock").exists():
            return
        time.sleep(0.1)


@pytest.fixture
def libvirtd_killed_once() -> Iterator[threading.Event]:
    """Kills libvirtd once, as soon as a gate guest runs, and starts it again 5 s later; the
    event is set when it did."""
    done, stop = threading.Event(), threading.Event()

    def kill_when_a_guest_runs() -> None:
        while not stop.is_set():
            try:
                conn = libvirt.open("qemu:///system")
                running = [d for d in conn.listAllDomains() if d.isActive()
                           and d.name().startswith("ucvm-")]  # fmt: skip
                conn.close()
            except libvirt.libvirtError:
                running = []
            if running:
                subprocess.run(["pkill", "-KILL", "-x", "libvirtd"], check=False)
                time.sleep(5)
                start_libvirtd()
                done.set()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=kill_when_a_guest_runs, daemon=True)
    watcher.start()
    yield done
    stop.set()
    watcher.join(timeout=30)
    start_libvirtd()


@pytest.mark.exclusive
def test_an_infrastructure_failure_is_incomplete_and_retried(
    gate_lab: GateLab, libvirtd_killed_once: threading.Event
) -> None:
    """libvirtd killed while the first guests boot: those cells are incomplete (not failed),
    rerun once, and pass; the verdict passes. Nothing is left behind."""
    done = gate_lab.gate("--candidate", "1.3-rc0", "--targets", "kvm", "--boots", "1")
    said = done.stdout + done.stderr
    assert libvirtd_killed_once.is_set(), "libvirtd was never killed: no guest ran"
    assert "rerunning" in said and "failed or incomplete cell(s) once" in said, said
    results = read_results([gate_lab.root / "reports" / RESULTS])
    broken = [r for r in results if r.incomplete]
    assert broken and all("libvirt" in (r.incomplete or "") for r in broken), broken
    assert done.returncode == 0, said
    assert gate_lab.verdict("1.3-rc0")["passed"] is True
    conn = libvirt.open("qemu:///system")
    assert [d.name() for d in conn.listAllDomains() if d.name().startswith("ucvm-")] == []
