"""Rebase: a VM in the field updates from one version to another and keeps its local changes.

A cell boots FROM (matrix.yaml `checks.rebase.rebase_from`), makes the local changes a user
makes (through the lab's command channel), finds the update (`ucvm-update --check`, exit 100),
stages it (`--apply`, then `--check` says 110), reboots, and checks each rule of the rebase
inside the guest, one Allure step per rule. A failed rule does not hide the others: all are
checked, and the test fails at the end naming every one that failed.
The rules and the fixture files the releases carry for them: README, "The update model". The
local .debs (lab.build.fixture_debs) go in through the channel; the package and account rules
(R8, R10-R12) are read by suites/rebase/guest.py.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import allure
import pytest

from lab import evidence, matrix
from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader
from lab.build.osrepo.manifest import Snapshot
from lab.build.osrepo.repository import Repository
from lab.observe import BootRecord, observe_boot, update_findings
from lab.services.repo import RepoServer
from lab.targets.base import CommandResult, Instance, Target
from suites.rebase import guest

pytestmark = [pytest.mark.boot, pytest.mark.check("rebase")]

FIXTURE = "/etc/ucvm-fixture"
USR_FILE = "/usr/share/ucvm-fixture/usr-file"
LOCAL_EDIT = "local-edit=1"
UPDATE_AVAILABLE, UPDATE_STAGED = 100, 110
# What the cell changes on FROM, one command each (a user at a shell would do the same).
LOCAL_CHANGES = {
    "edit a file the new release also changes": f"echo {LOCAL_EDIT} >>{FIXTURE}/changes.conf",
    "edit a file no release changes": f"echo {LOCAL_EDIT} >>{FIXTURE}/stable.conf",
    "delete a file no release changes": f"rm {FIXTURE}/deletable.conf",
    "delete a file the new release changes": "rm /etc/motd",
    "edit a file outside the configuration area": f"echo {LOCAL_EDIT} >>{USR_FILE}",
    "add a user with files in /home and /var": (
        "useradd -m -s /bin/bash alice && echo alice:rebase-test | chpasswd && "
        "echo hers >/home/alice/notes && mkdir -p /var/lib/alice-data && "
        "echo data >/var/lib/alice-data/db && chown -R alice: /home/alice /var/lib/alice-data"
    ),
}


@dataclass
class Rules:
    """The rules checked after the update, each its own Allure step; failures collected."""

    failed: list[str] = field(default_factory=list)

    def check(self, name: str, verdict: Callable[[], str | None]) -> None:
        """``verdict`` returns None when the rule holds, else what was found instead."""
        with allure.step(name):
            try:
                problem = verdict()
            except Exception as error:  # a rule that cannot be checked fails; the rest go on
                problem = f"could not be checked: {type(error).__name__}: {error}"
            if problem:
                self.failed.append(f"{name}: {problem}")
                allure.attach(problem, "what was found", allure.attachment_type.TEXT)

    def not_applicable(self, name: str, why: str) -> None:
        """A rule this pair has no case for: a passing step that says so."""
        with allure.step(f"{name}: n/a"):
            allure.attach(why, "why it does not apply", allure.attachment_type.TEXT)


def shell(instance: Instance, command: str, timeout: float = 120) -> CommandResult:
    return instance.run(command, timeout=timeout)


def exit_code(instance: Instance, command: str) -> tuple[int, str]:
    result = shell(instance, command, timeout=180)
    return result.exit_code, result.output


def cat(instance: Instance, path: str) -> str | None:
    result = shell(instance, f"cat {shlex.quote(path)}")
    return result.output if result.ok else None


def boot_device_hash(instance: Instance) -> str:
    """The SHA-256 of the boot device (the image's boot partition, or the ISO's drive)."""
    command = 'device=$(findfs LABEL=UCVM_BOOT) && [ -b "$device" ] && sha256sum "$device"'
    result = shell(instance, command)
    digest = result.output.split()[0] if result.ok and result.output.split() else ""
    assert re.fullmatch(r"[0-9a-f]{64}", digest), f"no hash of the boot device: {result.output}"
    return digest


def make_local_changes(instance: Instance, source: Snapshot) -> guest.LocalState:
    for what, command in LOCAL_CHANGES.items():
        with allure.step(f"local change: {what}"):
            result = shell(instance, command)
            assert result.ok, f"{what}: `{command}` failed: {result.output}"
    debs = guest.local_packages(source.tag)
    with allure.step(f"local change: dpkg -i {', '.join(deb.key for deb in debs)}"):
        guest.install_local_packages(instance, source.tag)
    return guest.record_local_state(instance, debs)


def notify_and_apply(instance: Instance, source: Snapshot, dest: Snapshot) -> None:
    """An update on the pinned branch is found (exit 100); one on another branch is not (the
    VM is up to date on its own, exit 0) and is applied by naming it."""
    same_branch = dest.branch == source.branch
    expected = UPDATE_AVAILABLE if same_branch else 0
    with allure.step(f"ucvm-update --check exits {expected} and notifies"):
        code, output = exit_code(instance, "ucvm-update --check --notify")
        assert code == expected, f"exit {code}: {output}"
        findings = update_findings(instance.current_boot_console())
        assert findings, "no `ucvm: update` marker on the console"
        status = "available" if same_branch else "up-to-date"
        assert findings[-1]["status"] == status, findings
        if same_branch:
            assert findings[-1]["newest"] == dest.tag, findings
    with allure.step(f"ucvm-update --apply --to {dest.tag} stages it"):
        code, output = exit_code(instance, f"ucvm-update --apply --to {dest.tag}")
        assert code == 0, f"exit {code}: {output}"
        code, output = exit_code(instance, "ucvm-update --check")
        assert code == UPDATE_STAGED, f"after --apply, --check exits {code}: {output}"


def kexec_verdict(second: BootRecord, source: Snapshot, dest: Snapshot) -> str | None:
    """The two-phase boot when the new version wants another boot loader, else none at all."""
    old, new = source.loader or "0.1", dest.loader or "0.1"
    steps = [p.fields for p in second.phases_named("kexec")]
    if old == new:
        return None if not steps else f"a kexec without a loader change: {steps}"
    load = {"step": "load", "from": old, "to": new}
    if len(steps) != 2 or not load.items() <= steps[0].items():
        return f"expected phase 1 to load {old}->{new} and phase 2 to report it: {steps}"
    start = second.phase("start")
    if steps[1] != {"from": old, "to": new} or not start:
        return f"phase 2 said {steps[1]}"
    return None if start.fields.get("loader_version") == new else f"phase 2 ran {start.fields}"


def check_account_rule(
    rules: Rules, instance: Instance, local: guest.LocalState, source: Snapshot, dest: Snapshot
) -> None:
    name = "R8 the local user's ids the new release took moved, her files chowned, the idmap kept"
    if not guest.collisions(local, dest.tag):
        ids = f"uid {local.uid} or gid {local.gid}"
        return rules.not_applicable(
            name, f"{dest.tag} adds no account at {guest.LOCAL_USER}'s {ids}"
        )
    rules.check(name, lambda: guest.accounts_verdict(instance, local, source.tag, dest.tag))


def check_package_rules(
    rules: Rules, instance: Instance, local: guest.LocalState, dest: Snapshot
) -> None:
    log = shell(instance, f"cat {guest.REBASE_LOGS}").output
    kept, replaced = guest.kept_and_replaced(local, dest.tag)
    rules.check(
        f"R10 the local packages kept (dpkg -s, dpkg -V, files): {guest.keys(kept) or 'none'}",
        lambda: guest.kept_packages_verdict(instance, kept, log),
    )
    name = "R11 a local package the new release ships is the release's version, and logged"
    if replaced:
        verdict = partial(guest.replaced_packages_verdict, instance, replaced, dest.tag, log)
        rules.check(f"{name}: {', '.join(replaced)}", verdict)
    else:
        shipped = guest.keys(guest.shipped(dest.tag)) or "no fixture package"
        rules.not_applicable(name, f"{dest.tag} ships {shipped}; none was installed locally")
    rules.check(
        "R12 dpkg --audit is clean in the guest, and apt-get check passes on the host",
        lambda: guest.database_verdict(instance, guest.fetch_file(instance, guest.STATUS)),
    )


def attach_package_evidence(instance: Instance, local: guest.LocalState) -> None:
    idmap = shell(instance, f"cat {guest.IDMAP}")
    allure.attach(idmap.output, "idmap", allure.attachment_type.TEXT)
    after = guest.fetch_file(instance, guest.STATUS)
    diff = guest.status_diff(local.status, after) if after else f"{guest.STATUS}: unreadable"
    allure.attach(
        diff, "dpkg status: FROM (with the local packages) -> TO", allure.attachment_type.TEXT
    )


def check_rules(
    instance: Instance,
    second: BootRecord,
    source: Snapshot,
    dest: Snapshot,
    image_hash: str,
    local: guest.LocalState,
) -> list[str]:
    rules = Rules()
    changes = cat(instance, f"{FIXTURE}/changes.conf") or ""
    new_copy = cat(instance, f"{FIXTURE}/changes.conf.ucvm-new")
    rules.check(
        "R1 changed locally and upstream: the local copy kept, upstream's beside it as .ucvm-new",
        lambda: (
            None
            if LOCAL_EDIT in changes and new_copy == f"release={dest.tag}\n"
            else f"changes.conf={changes!r}, .ucvm-new={new_copy!r}"
        ),
    )
    stable = cat(instance, f"{FIXTURE}/stable.conf") or ""
    stable_new = cat(instance, f"{FIXTURE}/stable.conf.ucvm-new")
    rules.check(
        "R2 changed locally only: kept, with no .ucvm-new",
        lambda: None if LOCAL_EDIT in stable and stable_new is None else repr((stable, stable_new)),
    )
    deletable = cat(instance, f"{FIXTURE}/deletable.conf")
    rules.check(
        "R3 deleted locally, unchanged upstream: stays deleted",
        lambda: None if deletable is None else f"it is back: {deletable!r}",
    )
    motd = cat(instance, "/etc/motd")
    rules.check(
        "R4 deleted locally, changed upstream: restored",
        lambda: None if motd and dest.tag in motd else f"/etc/motd is {motd!r}",
    )
    usr = cat(instance, USR_FILE) or ""
    rules.check(
        "R6 the edit under /usr is dropped: the new release shows through",
        lambda: None if usr == "usr=1\n" else f"{USR_FILE} is {usr!r}",
    )
    alice = shell(instance, "id -u alice && cat /home/alice/notes /var/lib/alice-data/db && "
                            "stat -c %U /home/alice/notes /var/lib/alice-data/db && "
                            "getent shadow alice | cut -d: -f2 | cut -c1-3")  # fmt: skip
    rules.check(
        "R7 the local user keeps her name, password and files",
        lambda: (
            None
            if alice.ok
            and "hers" in alice.output
            and alice.output.count("alice") >= 2
            and "$" in alice.output
            else alice.output
        ),
    )
    check_account_rule(rules, instance, local, source, dest)
    orphans = shell(instance, r"find / -xdev \( -nouser -o -nogroup \) -print | head -n 20")
    rules.check(
        "R9 no orphaned files",
        lambda: None if orphans.ok and not orphans.output.strip() else orphans.output,
    )
    check_package_rules(rules, instance, local, dest)
    loaders = f"{source.loader or '0.1'} -> {dest.loader or '0.1'}"
    rules.check(
        f"R13 the boot loader ({loaders}): a two-phase kexec boot exactly when it changes",
        lambda: kexec_verdict(second, source, dest),
    )
    after = boot_device_hash(instance)
    rules.check(
        "R14 the boot device is unchanged (the loader update went to scratch)",
        lambda: None if after == image_hash else f"{image_hash[:12]} -> {after[:12]}",
    )
    repo = second.phase("repo")
    rebase = second.phase("rebase")
    rules.check(
        f"R15 {dest.tag} booted (tag and snapshot), units_failed=0, the rebase reported",
        lambda: (
            None
            if second.os_version == dest.tag
            and repo is not None
            and repo.fields.get("snapshot") == dest.image_sha256[:12]
            and second.ready_field("units_failed") == "0"
            and rebase is not None
            and rebase.fields.get("from") == source.tag
            else second.phase_table()
        ),
    )
    return rules.failed


def test_rebase_carries_local_changes(
    cell: matrix.Cell,
    rebase_from: str,
    target: Target,
    boot_loader: BootLoader,
    os_repo: Repository,
    repo_server: RepoServer,
    lab_matrix: matrix.Matrix,
    attach_boot: Callable[[BootRecord | None, str, str], None],
) -> None:
    manifest = os_repo.manifest()
    source, dest = manifest.resolve(rebase_from), manifest.resolve(cell.version)
    if source.image_sha256 == dest.image_sha256:
        pytest.fail(f"matrix.yaml: rebase from {rebase_from} to {cell.version} is no update")
    budget = lab_matrix.checks["rebase"].boot_budget_s or lab_matrix.settings.boot_budget_s
    image_format = target.format_for()
    first = second = None
    with target.launch(
        boot_loader,
        boot_args=[f"ucvm.version={rebase_from}"],
        host_services={GUEST_REPO_ADDRESS: repo_server.port},
    ) as instance:
        try:
            with allure.step(f"boot {source.tag}"):
                first = observe_boot(instance, budget)
                assert first.ready, first.summary()
            image_hash = boot_device_hash(instance)
            local = make_local_changes(instance, source)
            notify_and_apply(instance, source, dest)
            instance.reboot()
            with allure.step(f"reboot into {dest.tag}"):
                second = observe_boot(instance, budget)
                assert second.ready, second.summary()
            failed = check_rules(instance, second, source, dest, image_hash, local)
            log = shell(instance, f"cat {guest.REBASE_LOGS}")
            allure.attach(log.output, "rebase log", allure.attachment_type.TEXT)
            attach_package_evidence(instance, local)
        finally:
            attach_boot(second or first, instance.console(), image_format)
    for name, value in evidence.rebase_labels(rebase_from, failed).items():
        allure.dynamic.label(name, value)
    assert not failed, "rules that failed:\n" + "\n".join(failed)
