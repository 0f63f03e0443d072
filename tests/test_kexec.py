"""The kexec path of a two-phase boot (issue 12; docs/rebase-plan.md, Stage 3's smoke test), in
a real guest booted from its disk through SeaBIOS.

The boot loader boots alone (ucvm.os=none), fetches its own kernel and initramfs from a lab
server over HTTP (`ucvm-blockd get`: the initramfs cannot read its FAT boot partition, it has no
vfat module), loads them with `ucvm-blockd kexec --load-only`, then jumps with `ucvm-blockd
kexec`. The second boot must print its own `start` ... `ready os=none`, with the `kexec` marker
of phase 2, re-probe its NIC and disk, and still see the platform's SMBIOS boot options: its
`ready os=none` and its console channel come from them alone (the command line carries neither).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader
from lab.observe import LOADER_PHASES, BootRecord, observe_boot
from lab.services.repo import RepoServer
from lab.targets.libvirt import LibvirtInstance

pytestmark = pytest.mark.boot
BOOT_BUDGET_S = 240  # a boot loader-only boot under TCG: ~15-30 s
FETCH_TIMEOUT_S = 120  # 11 MB through QEMU's user network, under TCG
LOADER_ONLY = ["ucvm.os=none"]  # an SMBIOS boot option, not on the kernel command line
STAGED = "/run/ucvm/kexec-test"  # in RAM: scratch is unmounted before the jump
CALLED = "ucvm-test: kexec called"  # the guest's line just before the jump (not a marker)


@pytest.fixture
def loader_server(boot_loader: BootLoader, tmp_path: Path) -> Iterator[RepoServer]:
    """The boot loader's own kernel and initramfs, served by nginx on 127.0.0.1."""
    root = tmp_path / "loader"
    root.mkdir()
    (root / "manifest").write_text("ucvm-manifest 1\n")  # RepoServer serves repositories only
    shutil.copy2(boot_loader.vmlinuz, root / "vmlinuz")
    shutil.copy2(boot_loader.initrd, root / "initrd.img")
    with RepoServer(root, tmp_path / "nginx") as server:
        yield server


def guest_ok(instance: LibvirtInstance, command: str, timeout: float = 60) -> str:
    result = instance.run(command, timeout=timeout)
    assert result.ok, f"{command!r} exited {result.exit_code}:\n{result.output}"
    return result.output.strip()


def fetch(instance: LibvirtInstance, source: Path, name: str) -> str:
    """``source`` (kernel or initramfs) fetched into STAGED in the guest, its hash checked."""
    url = f"http://{GUEST_REPO_ADDRESS.removesuffix(':80')}/{source.name}"
    size = source.stat().st_size
    guest_ok(
        instance,
        f"mkdir -p {STAGED} && ucvm-blockd get {url} {STAGED}/{name} --max-bytes {size}",
        FETCH_TIMEOUT_S,
    )
    digest = guest_ok(instance, f"sha256sum {STAGED}/{name}").split()[0]
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest(), f"{name} arrived damaged"
    return f"{STAGED}/{name}"


def kexec_command(kernel: str, initrd: str, from_version: str, *extra: str) -> str:
    cmdline = f'"$(cat /proc/cmdline) ucvm.kexec_from={from_version}"'
    return " ".join(["ucvm-blockd", "kexec", kernel, initrd, cmdline, *extra])


def jump(instance: LibvirtInstance, command: str) -> None:
    """Start the jump in the background, as phase_kexec does it (sync, scratch unmounted, the
    NICs down), and return before it happens; the console shows the rest."""
    nics = "for n in /sys/class/net/*; do [ ${n##*/} = lo ] || ip link set ${n##*/} down; done"
    script = (
        f"sleep 1; sync; umount /scratch; {nics}; "
        f'echo "{CALLED} t=$(cut -d" " -f1 /proc/uptime)"; {command}'
    )
    instance.mark_new_boot()  # from now on, waits and host times concern the second boot
    guest_ok(instance, f"( {script} ) </dev/null >/dev/console 2>&1 &")


def jump_timings(instance: LibvirtInstance, second: BootRecord) -> str:
    """Host seconds from the guest's line before the jump to the second `start` and `ready`."""
    called = next(t for t, line in instance.current_boot_timeline() if CALLED in line)
    start, ready = second.phase("start"), second.phase("ready")
    assert start and ready and start.host_s is not None and ready.host_s is not None
    return (
        f"kexec under {second.accel}: the call -> second start {start.host_s - called:.2f} s, "
        f"-> ready {ready.host_s - called:.2f} s (host); the second kernel's uptime at ready "
        f"{ready.guest_s:.2f} s"
    )


def boot_facts(instance: LibvirtInstance) -> dict[str, str]:
    """What must be the same on both sides of the jump: the SMBIOS boot options as /init read
    them (hashed: they hold the channel's key), and the devices the boot found."""
    return {
        "boot_args": guest_ok(instance, "sha256sum </run/ucvm/boot-args").split()[0],
        "smbios_oem": guest_ok(instance, "ls /sys/firmware/dmi/entries | grep '^11-'"),
        "disks": guest_ok(instance, "ls /sys/block | grep -v '^loop' | tr '\\n' ' '"),
        "nics": guest_ok(instance, "ls /sys/class/net | tr '\\n' ' '"),
    }


def devices(record: BootRecord) -> dict[str, str | None]:
    modules, network, scratch = (record.phase(n) for n in ("modules", "network", "scratch"))
    assert modules and network and scratch, record.phase_table()
    return {
        "drivers": modules.fields.get("drivers"),
        "nic": network.fields.get("driver"),
        "ip": network.fields.get("ip"),
        "scratch": scratch.fields.get("dev"),
    }


def test_kexec_into_the_loader_s_own_kernel_boots_it_again(
    make_local_target, boot_loader: BootLoader, loader_server: RepoServer
) -> None:
    services = {GUEST_REPO_ADDRESS: loader_server.port}
    target = make_local_target("kexec", "kvm")
    with target.launch(boot_loader, boot_args=LOADER_ONLY, host_services=services) as instance:
        first = observe_boot(instance, BOOT_BUDGET_S)
        assert first.ready and first.os_version == "none", first.phase_table()
        assert first.phases_named("kexec") == [], first.phase_table()  # nothing staged
        before = boot_facts(instance)
        kernel = fetch(instance, boot_loader.vmlinuz, "kernel")
        initrd = fetch(instance, boot_loader.initrd, "initrd")
        command = kexec_command(kernel, initrd, boot_loader.version)
        assert guest_ok(instance, f"{command} --load-only") == "loaded"
        assert guest_ok(instance, "cat /sys/kernel/kexec_loaded") == "1"

        jump(instance, command)
        second = observe_boot(instance, BOOT_BUDGET_S)
        console = instance.current_boot_console()
        assert second.phase("start") is not None, f"no second boot:\n{console[-3000:]}"
        assert second.ready, f"{second.phase_table()}\n{console[-3000:]}"
        cmdline = guest_ok(instance, "cat /proc/cmdline")  # the channel key survived too
        after = boot_facts(instance)
        print(jump_timings(instance, second))

    # The second boot is the loader again, told it was kexec'd, and it did not jump again.
    assert [p.name for p in second.phases if p.name in LOADER_PHASES] == list(LOADER_PHASES)
    assert all(p.status == "ok" for p in second.phases), second.phase_table()
    [kexec] = second.phases_named("kexec")
    assert kexec.fields == {"from": boot_loader.version, "to": boot_loader.version}
    assert f"ucvm.kexec_from={boot_loader.version}" in cmdline.split()
    assert second.os_version == "none"  # ucvm.os=none came from SMBIOS alone
    assert after == before
    assert devices(second) == devices(first)  # NIC, disk and drivers probed afresh, the same
    scratch, first_scratch = second.phase("scratch"), first.phase("scratch")
    assert scratch and first_scratch and scratch.fields["action"] == "reused"
    assert int(scratch.fields["boots"]) == int(first_scratch.fields["boots"]) + 1
