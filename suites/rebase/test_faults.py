"""The update's faults (issue 12, "Bad input and faults"; docs/rebase-plan.md, section 6), each
in a real guest of each quick target of the rebase check (kvm: booted from its disk image) that
the run selects, against this run's OS repository. The nightly runs them; the default test run
leaves them out (about 14 min of TCG, beyond its budget).

- scratch full, then the repository unreachable (one guest): `ucvm-update --apply` refuses
  with "scratch full" (exit 1), then, the server stopped, `--check` and `--apply` exit 2
  naming it; the pin, staged/ and kexec/ hash the same as before;
- the policy `stay` (a boot option): `--check` reports the update (exit 100, policy stay),
  `--apply` refuses it (exit 4) saying where the policy was set;
- a staged boot loader whose hash does not match: refused at phase 1 (`phase=kexec
  status=refused reason=hash-mismatch`), the old loader boots the old pin;
- a release that never boots (releases.yaml's branch `faults`: its /sbin/init exits, the
  kernel panics): after a power cut, the next boot rolls back, every local change intact;
- a power cut in the middle of a rebase (held by `ucvm.break=rebase-accounts`): the next boot
  rolls back to the old pin (the trial's boot was counted before the rebase began, so the
  break, which only a rebase reaches, does not hold it again) and loses no local file.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import allure
import pytest

from lab import matrix
from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader
from lab.build.osrepo.repository import Repository
from lab.evidence import REBASE_CHECK
from lab.observe import (
    FAILURE,
    LINE_START,
    BootRecord,
    observe_boot,
    record_from_console,
    update_findings,
)
from lab.services.repo import RepoServer
from lab.targets.base import CommandResult, Instance, Target

pytestmark = [pytest.mark.boot, pytest.mark.nightly]

FROM = "previous"  # the version each case boots first: the update to newest is available
BROKEN_BRANCH = "faults"  # releases.yaml: the release whose /sbin/init exits (1.3-broken)
DEVEL = "devel"  # its head wants another boot loader: --apply stages a kexec/V
SCRATCH = "/.ucvm/scratch"
UCVM = f"{SCRATCH}/ucvm"
TREES = f"{UCVM}/pin {UCVM}/staged {UCVM}/kexec"  # what a refused update must leave as it was
FILL = f"{SCRATCH}/ucvm-fault-fill"
SPARE_MIB = 8  # what the scratch-full case leaves free
LOCAL_FILE = "/root/ucvm-fault-local"
FIXTURE = "/etc/ucvm-fixture"
LOCAL_CHANGES = (
    f"echo kept >{LOCAL_FILE}",
    f"echo local-edit=1 >>{FIXTURE}/stable.conf",
    f"rm {FIXTURE}/deletable.conf",
)
# The local state a rollback must keep: the fixture folder's names and every file's hash
LOCAL_STATE = f"ls -A {FIXTURE} && sha256sum {LOCAL_FILE} {FIXTURE}/*"
UP_TO_DATE, E_LOCAL, E_UNREACHABLE, E_POLICY, AVAILABLE = 0, 1, 2, 4, 100
APPLY_TIMEOUT_S = 300  # --apply fetches a boot loader (~11 MB) through QEMU's user network
# The loader does not sync the rebase log before its break: the kernel writes a dirty file back
# within dirty_expire (30 s) + one writeback period (5 s), and on scratch (ext2, no journal)
# the inode's block that this dirties takes as long again. Waited before the power cut, the
# half-written log is on the disk when the power goes (40 s left it empty).
WRITEBACK_S = 75
REBASE_BREAK = "rebase-accounts"
BREAK_LINE = LINE_START + rf"ucvm: break before phase={REBASE_BREAK} \(ucvm\.break\)"
# not-ready: a trial that never reached `ready` (README); interrupted: the plan's name for a
# rebase cut short, which the loader does not tell apart yet
ROLLBACK_REASONS = ("not-ready", "interrupted")
SCRATCH_FULL = re.compile(rf"scratch full: need (\d+) MiB, (\d+) MiB free on {SCRATCH}")


# --------------------------------------------------------------------------- fixtures


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A case per quick target of the rebase check that this run selects (--targets)."""
    lab_matrix: matrix.Matrix = metafunc.config.ucvm_matrix  # type: ignore[attr-defined]
    check = lab_matrix.checks.get(REBASE_CHECK)
    selected = [name for name in metafunc.config.getoption("--targets").split(",") if name]
    names = [
        t.name
        for t in lab_matrix.targets
        if check and check.covers_target(t.name) and not check.nightly_only(t.name)
        if not selected or t.name in selected
    ]
    metafunc.parametrize("fault_target_name", names)


@pytest.fixture
def fault_target(fault_target_name: str, lab_targets: dict[str, Target]) -> Target:
    """The case's target; one that cannot run here fails (a fault test does not skip)."""
    chosen = lab_targets[fault_target_name]
    ok, why = chosen.available()
    if not ok:
        pytest.fail(f"{fault_target_name} must run here for the rebase fault tests: {why}")
    allure.dynamic.parent_suite("rebase faults")
    allure.dynamic.tag(fault_target_name)
    return chosen


@pytest.fixture
def budget(lab_matrix: matrix.Matrix) -> float:
    return lab_matrix.checks["rebase"].boot_budget_s or lab_matrix.settings.boot_budget_s


@pytest.fixture
def own_server(os_repo: Repository, tmp_path: Path) -> Iterator[RepoServer]:
    """This test's own server of the run's repository, which the test may stop."""
    with RepoServer(os_repo.root, tmp_path / "nginx") as server:
        yield server


Boot = Callable[..., AbstractContextManager[tuple[Instance, BootRecord]]]


@pytest.fixture
def boot(fault_target: Target, boot_loader: BootLoader, budget: float) -> Boot:
    """``boot(server, *args)``: a guest of the case's target launched with boot options
    ``args``, reaching ``server``, at `ready`; destroyed on leaving."""

    @contextmanager
    def booted(server: RepoServer, *args: str) -> Iterator[tuple[Instance, BootRecord]]:
        services = {GUEST_REPO_ADDRESS: server.port}
        launch = fault_target.launch(boot_loader, boot_args=list(args), host_services=services)
        with launch as instance:
            yield instance, ready_boot(instance, budget)

    return booted


# --------------------------------------------------------------------------- in the guest


def tail(instance: Instance) -> str:
    return instance.current_boot_console()[-3000:]


def ready_boot(instance: Instance, budget: float) -> BootRecord:
    record = observe_boot(instance, budget)
    assert record.ready, f"{record.phase_table()}\n{tail(instance)}"
    # What the channel held from before the boot (`reboot -f` says "Rebooting." there) comes
    # with the next command's output: take it now
    instance.run(":")
    return record


def sh(instance: Instance, command: str, timeout: float = 120) -> CommandResult:
    return instance.run(command, timeout=timeout)


def ok(instance: Instance, command: str, timeout: float = 120) -> str:
    result = sh(instance, command, timeout)
    assert result.ok, f"{command!r} exited {result.exit_code}:\n{result.output}"
    return result.output.strip()


def update(instance: Instance, *args: str) -> CommandResult:
    return sh(instance, f"ucvm-update {shlex.join(args)} 2>&1", APPLY_TIMEOUT_S)


def expect(result: CommandResult, code: int, *words: str) -> None:
    """``result`` exited ``code`` and its output holds each of ``words``."""
    missing = [w for w in words if w not in result.output]
    assert result.exit_code == code and not missing, (
        f"{result.command!r} exited {result.exit_code} (expected {code}); missing {missing}:\n"
        f"{result.output}"
    )


def tree_hashes(instance: Instance) -> str:
    """Every file of the pin, staged/ and kexec/ with its hash (missing trees: nothing)."""
    return ok(instance, f"find {TREES} -type f 2>/dev/null | sort | xargs -r sha256sum; true")


def pin_of(instance: Instance) -> dict[str, str]:
    lines = ok(instance, f"cat {UCVM}/pin").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def present(instance: Instance, *paths: str) -> list[str]:
    """Those of ``paths`` that exist in the guest."""
    found = ok(instance, " ".join(f"{{ [ ! -e {p} ] || echo {p}; }};" for p in paths) + " true")
    return found.split()


def pin_identity(pin: dict[str, str]) -> dict[str, str | None]:
    return {key: pin.get(key) for key in ("tag", "snapshot", "branch", "loader", "generation")}


def make_local_changes(instance: Instance) -> str:
    """The cases' local changes; returns LOCAL_STATE, which a rollback must keep."""
    for command in LOCAL_CHANGES:
        ok(instance, command)
    return ok(instance, LOCAL_STATE)


def repo_fields(record: BootRecord) -> dict[str, str]:
    """The boot's `repo` marker: the version, the policy, and a rollback's fields."""
    repo = record.phase("repo")
    assert repo is not None, record.phase_table()
    return repo.fields


def flip_a_byte(instance: Instance, path: str, offset: int = 4096) -> None:
    """One bit of ``path`` at ``offset`` flipped in place (the same size, another hash)."""
    before = ok(instance, f"sha256sum <{path}")
    byte = int(ok(instance, f"od -An -tu1 -j {offset} -N1 {path}"))
    ok(instance, f"printf '\\{byte ^ 1:03o}' | dd of={path} bs=1 seek={offset} conv=notrunc "
                 "status=none && sync")  # fmt: skip
    assert ok(instance, f"sha256sum <{path}") != before


# --------------------------------------------------------------------------- the cases


def test_scratch_full_and_an_unreachable_repository_change_nothing(
    boot: Boot,
    os_repo: Repository,
    own_server: RepoServer,
    budget: float,
) -> None:
    source = os_repo.manifest().resolve(FROM)
    with boot(own_server, f"ucvm.version={FROM}") as (instance, first):
        assert first.os_version == source.tag, first.phase_table()
        before = tree_hashes(instance)
        repo_url = ok(instance, "sed -n 's/^UCVM_REPO=//p' /.ucvm/boot.env")
        assert GUEST_REPO_ADDRESS.removesuffix(":80") in repo_url

        # scratch full: all its free space taken but SPARE_MIB (written: scratch is ext2, made
        # by the loader's mke2fs, and ext2 has no fallocate)
        free = f"$(df -Pm {SCRATCH} | awk 'NR == 2 {{ print $4 }}')"
        ok(instance, f"dd if=/dev/zero of={FILL} bs=1M count=$(( {free} - {SPARE_MIB} )) "
                     "status=none && sync", timeout=APPLY_TIMEOUT_S)  # fmt: skip
        full = update(instance, "--apply")
        expect(full, E_LOCAL, "scratch full", "nothing changed")
        said = SCRATCH_FULL.search(full.output)
        assert said and int(said[2]) <= SPARE_MIB < int(said[1]), full.output
        assert tree_hashes(instance) == before
        assert present(instance, f"{UCVM}/staged", f"{UCVM}/kexec") == []
        ok(instance, f"rm {FILL}")

        # unreachable: warmed first (the OS reads its own blocks from that server, lazily)
        expect(update(instance, "--check"), AVAILABLE)
        own_server.stop()
        for args in (["--check"], ["--apply"]):
            expect(update(instance, *args), E_UNREACHABLE, "unreachable", repo_url,
                   "nothing changed")  # fmt: skip
        assert tree_hashes(instance) == before


def test_the_policy_stay_reports_the_update_and_refuses_to_apply_it(
    boot: Boot,
    os_repo: Repository,
    repo_server: RepoServer,
    budget: float,
) -> None:
    newest = os_repo.manifest().resolve("newest")
    args = (f"ucvm.version={FROM}", "ucvm.update=stay")
    with boot(repo_server, *args) as (instance, first):
        assert repo_fields(first).get("policy") == "stay", first.phase_table()
        before = tree_hashes(instance)
        expect(update(instance, "--check", "--notify"), AVAILABLE, "policy stay", newest.tag)
        findings = update_findings(instance.current_boot_console())
        assert findings and findings[-1]["status"] == "available", findings
        assert findings[-1].get("policy") == "stay" and findings[-1].get("newest") == newest.tag
        refused = update(instance, "--apply")
        expect(refused, E_POLICY, "policy is stay", "the boot option ucvm.update=stay",
               "nothing changed")  # fmt: skip
        assert tree_hashes(instance) == before


def test_a_staged_loader_whose_hash_does_not_match_is_refused_and_the_old_pin_boots(
    boot: Boot,
    boot_loader: BootLoader,
    os_repo: Repository,
    repo_server: RepoServer,
    budget: float,
) -> None:
    manifest = os_repo.manifest()
    source, devel = manifest.resolve(FROM), manifest.resolve(DEVEL)
    assert devel.loader and devel.loader != boot_loader.version, "devel must want a new loader"
    with boot(repo_server, f"ucvm.version={FROM}") as (instance, _):
        pin = pin_identity(pin_of(instance))
        expect(update(instance, "--apply", "--to", DEVEL), UP_TO_DATE, "reboot to apply")
        flip_a_byte(instance, f"{UCVM}/kexec/{devel.loader}/initrd")
        instance.reboot()
        second = ready_boot(instance, budget)
        kexec = [(p.status, p.fields) for p in second.phases_named("kexec")]
        assert kexec == [
            ("refused", {"reason": "hash-mismatch", "to": devel.loader, "file": "initrd"})
        ], second.phase_table()
        assert second.os_version == source.tag, second.phase_table()
        assert pin_identity(pin_of(instance)) == pin
        staged_loader = f"{UCVM}/kexec/{devel.loader}"  # refused: moved aside as V.refused
        assert present(instance, f"{UCVM}/staged", staged_loader) == []
        assert present(instance, f"{staged_loader}.refused") == [f"{staged_loader}.refused"]
        expect(update(instance, "--check"), AVAILABLE)


def test_a_release_that_never_boots_is_rolled_back_with_every_local_change(
    boot: Boot,
    os_repo: Repository,
    repo_server: RepoServer,
    budget: float,
) -> None:
    manifest = os_repo.manifest()
    source, broken = manifest.resolve("newest"), manifest.resolve(BROKEN_BRANCH)
    assert broken.tag != source.tag and manifest.default_branch != BROKEN_BRANCH
    with boot(repo_server, "ucvm.version=newest") as (instance, _):
        local = make_local_changes(instance)
        layers = ok(instance, f"ls {UCVM}/layers")
        expect(update(instance, "--apply", "--to", broken.tag), UP_TO_DATE, "reboot to apply")
        instance.reboot()
        trial = observe_boot(instance, budget)
        assert trial.outcome == "panic", f"{trial.phase_table()}\n{tail(instance)}"
        assert "Attempted to kill init" in (trial.reason or ""), trial.reason
        assert repo_fields(trial).get("tag") == broken.tag, trial.phase_table()

        instance.power_cut()
        after = ready_boot(instance, budget)
        fields = repo_fields(after)
        rollback = (fields.get("rollback"), fields.get("reason"), fields.get("failed"))
        assert rollback == ("1", "not-ready", broken.tag), after.phase_table()
        assert after.os_version == source.tag, after.phase_table()
        assert ok(instance, LOCAL_STATE) == local
        assert ok(instance, f"ls {UCVM}/layers") == layers  # the trial's generation is gone
        checked = update(instance, "--check", "--notify")
        expect(checked, UP_TO_DATE, broken.tag, "not-ready", "rolled back")
        findings = update_findings(instance.current_boot_console())
        assert findings and findings[-1].get("failed") == broken.tag, findings


def test_a_power_cut_in_the_middle_of_a_rebase_rolls_back_and_loses_no_local_file(
    boot: Boot,
    os_repo: Repository,
    repo_server: RepoServer,
    budget: float,
) -> None:
    manifest = os_repo.manifest()
    source, dest = manifest.resolve(FROM), manifest.resolve("newest")
    args = (f"ucvm.version={FROM}", f"ucvm.break={REBASE_BREAK}")
    with boot(repo_server, *args) as (instance, _):
        local = make_local_changes(instance)
        expect(update(instance, "--apply"), UP_TO_DATE, "reboot to apply")
        instance.reboot()
        instance.wait_for(BREAK_LINE, budget, stop_on=FAILURE)
        held = record_from_console(instance.current_boot_console())
        assert repo_fields(held).get("tag") == dest.tag, held.phase_table()
        time.sleep(WRITEBACK_S)

        instance.power_cut()
        after = ready_boot(instance, budget)
        fields = repo_fields(after)
        assert fields.get("rollback") == "1" and fields.get("failed") == dest.tag, (
            after.phase_table()
        )
        assert fields.get("reason") in ROLLBACK_REASONS, after.phase_table()
        assert after.os_version == source.tag and after.phases_named("rebase") == []
        assert ok(instance, LOCAL_STATE) == local
        assert ok(instance, f"ls -d {UCVM}/layers/*.tmp 2>/dev/null; true") == ""
        logs = ok(instance, f"ls {UCVM}/rebase-{source.tag}-{dest.tag}-*.log").split()
        assert len(logs) == 1, logs
        log = ok(instance, f"cat {logs[0]}").splitlines()
        assert log and log[0].startswith(f"begin from={source.tag}@"), log[:3]
        assert not [line for line in log if line.startswith("end ")], log[-3:]
