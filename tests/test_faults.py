"""Faults lose nothing and leak nothing: a hung guest, a failed phase, a killed run, a dying
libvirtd. Each test boots a real guest (direct kernel boot: the fault, not the firmware, is
under test) and then checks that no domain, QEMU process or file of it is left."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from lab import matrix
from lab.build.bootloader import BootLoader
from lab.observe import observe_boot
from lab.run import Run, new_run_id
from lab.targets.base import TargetError
from lab.targets.libvirt import LibvirtTarget, sweep
from lab.targets.profiles import PROFILES

pytestmark = pytest.mark.boot
HANG_BUDGET_S = 20
# These boots have no OS repository: the boot loader stops after scratch and prints `ready`.
LOADER_ONLY = "ucvm.os=none"


@pytest.fixture
def kvm_target(lab_matrix: matrix.Matrix, lab_run: Run) -> LibvirtTarget:
    settings = lab_matrix.settings
    target = LibvirtTarget(
        "faults",
        PROFILES["kvm"],
        {},
        lab_run,
        default_uri=settings.libvirt_uri,
        accel=settings.accel,
    )
    ok, why = target.available()
    if not ok:
        pytest.fail(f"the local libvirt target must run here: {why}")
    return target


def leftovers(conn: libvirt.virConnect, name: str) -> list[str]:
    found = [f"domain {d.name()}" for d in conn.listAllDomains() if d.name() == name]
    processes = subprocess.run(["pgrep", "-af", name], capture_output=True, text=True).stdout
    found += [f"process {line}" for line in processes.splitlines() if "qemu" in line]
    return found


def test_a_hung_guest_is_destroyed_at_its_budget(
    kvm_target: LibvirtTarget, boot_loader: BootLoader
) -> None:
    with kvm_target.launch(boot_loader, kernel_args="ucvm.break=network") as instance:
        record = observe_boot(instance, HANG_BUDGET_S)
        name, workdir = instance.name, instance.workdir
        console = instance.console()
        modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in [workdir, *workdir.iterdir()]}

    assert record.outcome == "hang"
    assert record.failed_phase == "network"
    assert "ucvm.break=network" in record.reason
    assert "phase=modules" in console  # the console so far is kept for the report
    # QEMU (libvirt-qemu) only traverses the directories; libvirt hands it the files it needs
    assert modes.pop(workdir.name) == 0o711
    assert modes.pop("channel.sock") & 0o002 == 0  # QEMU's socket: nobody else may connect
    assert modes == dict.fromkeys(modes, 0o600), modes
    assert {"disk.qcow2", "console.log", "vmlinuz"} <= set(modes)
    assert leftovers(kvm_target.conn, name) == []
    assert not workdir.exists()


def test_a_failed_phase_is_reported_by_name(
    kvm_target: LibvirtTarget, boot_loader: BootLoader
) -> None:
    with kvm_target.launch(boot_loader, kernel_args="ucvm.scratch_min_mb=999999") as instance:
        record = observe_boot(instance, 120)

    assert record.outcome == "failed"
    assert record.failed_phase == "scratch"
    assert record.reason.startswith("no disk (need_mb=999999, ")
    assert [p.name for p in record.phases] == ["start", "modules", "network", "context", "scratch"]


KILLED_RUN = """
import sys, time
from pathlib import Path
from lab.build import bootloader
from lab.targets.libvirt import LibvirtTarget
from lab.targets.profiles import PROFILES
from lab.run import Run
run_id, root, accel = sys.argv[1:]
run = Run(run_id, Path(root)).hold()
target = LibvirtTarget("killed", PROFILES["kvm"], {}, run, accel=accel)
print(target.launch(bootloader.build(), kernel_args="ucvm.os=none").name, flush=True)
time.sleep(600)
"""


def test_the_sweeper_removes_what_a_killed_run_left(lab_matrix: matrix.Matrix) -> None:
    settings = lab_matrix.settings
    killed = Run(new_run_id(), settings.run_root)
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, killed.id, str(killed.root), settings.accel],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    name = process.stdout.readline().strip()
    process.kill()  # the run dies without cleaning up: its domain and files stay behind
    process.wait()
    conn = libvirt.open(settings.libvirt_uri)
    assert name.startswith(f"ucvm-{killed.id}-killed-"), name
    assert conn.lookupByName(name).isActive() and (killed.dir / name).exists()

    removed = sweep(settings.libvirt_uri, settings.run_root)

    assert f"domain {name}" in removed
    assert f"files {killed.dir}" in removed
    assert leftovers(conn, name) == []
    assert not killed.dir.exists()


def start_libvirtd() -> None:
    if subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode != 0:
        subprocess.run(["libvirtd", "-d"], check=True)
        for _ in range(100):
            if Path("/run/libvirt/libvirt-sock").exists():
                break
            time.sleep(0.1)


@pytest.fixture
def libvirtd_restarted() -> Iterator[None]:
    yield
    start_libvirtd()  # whatever the test did, libvirtd is back for the next one


@pytest.mark.exclusive
def test_libvirtd_dying_mid_run_fails_the_cell_and_leaks_nothing(
    kvm_target: LibvirtTarget, boot_loader: BootLoader, lab_run: Run, libvirtd_restarted: None
) -> None:
    instance = kvm_target.launch(boot_loader, kernel_args=LOADER_ONLY)
    instance.wait_for("ucvm: phase=start", 120)
    subprocess.run(["pkill", "-KILL", "-x", "libvirtd"], check=True)
    time.sleep(0.5)

    with pytest.raises(TargetError, match="libvirt"):
        instance.is_running()
    with pytest.raises(TargetError, match="cannot connect to libvirt"):  # a cell starting now
        LibvirtTarget("fresh", PROFILES["kvm"], {}, lab_run).available()  # fails, not skips
    instance.destroy()  # libvirtd is gone: the instance kills its own QEMU and removes its files
    processes = subprocess.run(["pgrep", "-af", instance.name], capture_output=True, text=True)
    assert "qemu" not in processes.stdout
    assert not instance.workdir.exists()

    subprocess.run(["libvirtd", "-d"], check=True)
    for _ in range(100):
        if Path("/run/libvirt/libvirt-sock").exists():
            break
        time.sleep(0.1)
    # The definition libvirtd kept is removed once libvirtd is back.
    sweep(kvm_target.uri, lab_run.root)
    names = [d.name() for d in kvm_target.conn.listAllDomains()]
    assert instance.name not in names
