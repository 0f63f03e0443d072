"""Unit tests of lab.observe (console text -> BootRecord) and of Timeline.feed.

The console texts are what a real boot prints: SeaBIOS and SYSLINUX banners, kernel messages
with their `[    1.63]` uptime prefix, the boot loader's markers exactly as /init prints them
(lab/build/initramfs/init and functions), systemd's own lines, and the booted OS's `ready`
(ucvm-ready.service, docs/os-on-demand.md).
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from lab import observe
from lab.build.osrepo.manifest import Manifest
from lab.observe import (
    LOADER_PHASES,
    OS_PHASES,
    PHASES,
    BootRecord,
    ContextStep,
    next_phase_after,
    parse_fields,
    record_from_console,
)
from lab.targets import base
from lab.targets.base import Timeline
from tests.guest_shell import (
    INSTANCE_UUID,
    SNAPSHOT_LINES,
    SNAPSHOTS,
    Guest,
    manifest,
    sha,
    smbios_oem_strings,
)

BANNER = """\
SeaBIOS (version 1.16.2-debian-1.16.2-1)
Booting from Hard Disk...
SYSLINUX 6.04 EDD 20190226 Copyright (C) 1994-2015 H. Peter Anvin et al
Loading /vmlinuz... ok
Loading /initrd.img...ok
[    0.000000] Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12)
[    0.412345] Run /init as init process
"""
START = "ucvm: phase=start t=1.63 kernel=6.1.0-28-cloud-amd64 loader_version=0.1"
MODULES = (
    "ucvm: phase=modules t=2.71 status=ok loaded=9 "
    "drivers=failover,net_failover,virtio,virtio_blk,virtio_net,virtio_pci,virtio_ring"
)
NETWORK = (
    "ucvm: phase=network t=4.22 status=ok iface=eth0 driver=virtio_net "
    "ip=169.254.169.15 gw=169.254.169.2"
)
# The boot loader's contextualization: a line per step, then the phase's marker
# (lab/build/initramfs/context); the boot option ucvm.version chose the OS, not the user-data.
CONTEXT_STEPS = [
    "ucvm: context step=channel status=found channel=nocloud source=/dev/sr0",
    "ucvm: context step=hostname status=applied value=ucvm-t1-kvm",
    "ucvm: context step=network status=applied mode=dhcp iface=eth0",
    "ucvm: context step=user-data status=handed-on bytes=212",
]
CONTEXT = "ucvm: phase=context t=4.60 status=ok channel=nocloud applied=2 rejected=0"
SCRATCH = "ucvm: phase=scratch t=4.90 status=ok dev=/dev/vda2 action=created size_mb=975 boots=1"
REPO = (
    "ucvm: phase=repo t=5.30 status=ok server=http://169.254.169.100/ tag=1.2 branch=prod "
    "source=requested snapshot=0123456789ab image_bytes=98304000"
)
MOUNT = (
    'ucvm: phase=mount t=6.10 status=ok snapshot="1.2 (0123456789ab)" '
    "cache_bytes=1048576 fetched_bytes=1048576"
)
SWITCH_ROOT = "ucvm: phase=switch_root t=6.20 status=ok init=/sbin/init"
# Printed by ucvm-ready.service in the booted OS, after multi-user.target.
OS_READY = (
    "ucvm: phase=ready t=31.20 os=1.2 release=1.2 snapshot=0123456789ab cache_bytes=41943040 "
    "fetched_bytes=41943040 evicted_blocks=0 units_failed=0"
)
# Printed by the boot loader itself right after scratch when booted with ucvm.os=none.
LOADER_READY = "ucvm: phase=ready t=5.12 cache_bytes=0 os=none"
MARKERS = {
    "start": START,
    "modules": MODULES,
    "network": NETWORK,
    "context": CONTEXT,
    "scratch": SCRATCH,
    "repo": REPO,
    "mount": MOUNT,
    "switch_root": SWITCH_ROOT,
    "ready": OS_READY,
}

# A whole boot into the OS as (host seconds since launch, console line); kernel and systemd
# noise between the markers.
LOADER_TIMELINE: list[tuple[float, str]] = [
    *[(0.4, line) for line in BANNER.splitlines()],
    (2.9, START),
    (3.3, "[    2.104311] virtio_blk virtio1: [vda] 28672 512-byte logical blocks (14.7 MB)"),
    (4.0, MODULES),
    (5.6, NETWORK),
    *[(5.65, line) for line in CONTEXT_STEPS],
    (5.7, CONTEXT),
    (5.9, "[    4.512000] EXT4-fs (vda2): mounted filesystem with ordered data mode."),
    (6.2, SCRATCH),
]
BOOT_TIMELINE: list[tuple[float, str]] = [
    *LOADER_TIMELINE,
    (6.9, REPO),
    (7.5, "[    5.980000] nbd0: detected capacity change from 0 to 192000"),
    (7.8, MOUNT),
    (7.9, SWITCH_ROOT),
    (8.3, "[    6.512345] systemd[1]: systemd 252.30-1~deb12u2 running in system mode"),
    (8.4, "Welcome to Debian GNU/Linux 12 (bookworm)!"),
    (33.0, "[  OK  ] Reached target multi-user.target - Multi-User System."),
    (33.6, OS_READY),
]
BOOT_CONSOLE = "".join(f"{line}\r\n" for _, line in BOOT_TIMELINE)
# The same boot loader with ucvm.os=none: no repository, `ready` right after scratch.
LOADER_ONLY_TIMELINE = [*LOADER_TIMELINE, (6.4, LOADER_READY)]
LOADER_ONLY_CONSOLE = "".join(f"{line}\r\n" for _, line in LOADER_ONLY_TIMELINE)


def console(*lines: str) -> str:
    """A console text: the banners, then ``lines``, each ended as a serial console ends it."""
    return BANNER + "".join(f"{line}\r\n" for line in lines)


def timeline_of(text: str) -> list[tuple[float, str]]:
    """A made-up timeline for ``text``: line n seen n/10 s after launch."""
    return [(n / 10, line) for n, line in enumerate(text.splitlines())]


def test_phases_are_the_loader_s_then_the_os_s() -> None:
    assert LOADER_PHASES == ("start", "modules", "network", "context", "scratch")
    assert OS_PHASES == ("repo", "mount", "switch_root")
    assert list(PHASES) == [*LOADER_PHASES, *OS_PHASES, "ready"]


# --- a boot that reaches the OS's ready -------------------------------------------------------


@pytest.fixture
def ready_record() -> BootRecord:
    return record_from_console(BOOT_CONSOLE, BOOT_TIMELINE, instance="ucvm-t1-kvm", accel="kvm")


def test_ready_boot_has_every_phase_in_order(ready_record: BootRecord) -> None:
    assert [p.name for p in ready_record.phases] == list(PHASES)
    assert ready_record.outcome == "ready"
    assert ready_record.ready
    assert (ready_record.failed_phase, ready_record.reason) == (None, None)


def test_ready_boot_guest_and_host_times(ready_record: BootRecord) -> None:
    assert [p.guest_s for p in ready_record.phases] == [
        1.63, 2.71, 4.22, 4.60, 4.90, 5.30, 6.10, 6.20, 31.20
    ]  # fmt: skip
    assert [p.host_s for p in ready_record.phases] == [
        2.9, 4.0, 5.6, 5.7, 6.2, 6.9, 7.8, 7.9, 33.6
    ]  # fmt: skip
    assert ready_record.guest_to_ready_s == 31.2
    assert ready_record.host_to_ready_s == 33.6


def test_ready_boot_loader_fields(ready_record: BootRecord) -> None:
    network = ready_record.phase("network")
    assert network is not None
    assert network.status == "ok"
    assert network.fields == {
        "iface": "eth0",
        "driver": "virtio_net",
        "ip": "169.254.169.15",
        "gw": "169.254.169.2",
    }
    start = ready_record.phase("start")
    assert start is not None and start.fields["kernel"] == "6.1.0-28-cloud-amd64"
    modules = ready_record.phase("modules")
    assert modules is not None and modules.fields["drivers"].split(",")[-1] == "virtio_ring"


def test_ready_boot_os_phase_fields(ready_record: BootRecord) -> None:
    repo = ready_record.phase("repo")
    assert repo is not None and repo.status == "ok"
    assert repo.fields == {
        "server": "http://169.254.169.100/",
        "tag": "1.2",
        "branch": "prod",
        "source": "requested",
        "snapshot": "0123456789ab",
        "image_bytes": "98304000",
    }
    mount = ready_record.phase("mount")
    assert mount is not None
    assert mount.fields == {
        "snapshot": "1.2 (0123456789ab)",
        "cache_bytes": "1048576",
        "fetched_bytes": "1048576",
    }
    switch_root = ready_record.phase("switch_root")
    assert switch_root is not None and switch_root.fields == {"init": "/sbin/init"}


def test_ready_boot_os_ready_marker(ready_record: BootRecord) -> None:
    assert ready_record.os_version == "1.2"
    assert ready_record.ready_field("release") == "1.2"
    assert ready_record.ready_field("snapshot") == "0123456789ab"
    assert ready_record.ready_field("units_failed") == "0"
    assert ready_record.ready_field("no_such_field") is None
    assert ready_record.ready_bytes("cache_bytes") == 41943040
    assert ready_record.ready_bytes("fetched_bytes") == 41943040
    assert ready_record.ready_bytes("evicted_blocks") == 0
    assert ready_record.ready_bytes("snapshot") is None  # a hash, not a byte count
    assert ready_record.ready_bytes("no_such_field") is None


def test_ready_summary(ready_record: BootRecord) -> None:
    assert ready_record.summary() == (
        "ready after 33.6 s host time (31.20 s guest uptime), accel kvm"
    )


def test_without_timeline_host_time_is_unknown() -> None:
    record = record_from_console(BOOT_CONSOLE)
    assert record.outcome == "ready"
    assert [p.name for p in record.phases] == list(PHASES)
    assert all(p.host_s is None for p in record.phases)
    assert record.host_to_ready_s is None


def test_ready_summary_without_timeline() -> None:
    record = record_from_console(BOOT_CONSOLE)
    assert record.summary() == "ready (host time unknown) (31.20 s guest uptime), accel unknown"
    rows = record.phase_table().splitlines()
    assert rows[len(PHASES)].split()[:3] == ["ready", "31.20", "-"]


# --- a boot loader-only boot (ucvm.os=none) ----------------------------------------------------


@pytest.fixture
def loader_only_record() -> BootRecord:
    return record_from_console(
        LOADER_ONLY_CONSOLE, LOADER_ONLY_TIMELINE, instance="ucvm-t1-kvm", accel="kvm"
    )


def test_loader_only_boot_skips_the_os_phases(loader_only_record: BootRecord) -> None:
    assert [p.name for p in loader_only_record.phases] == [*LOADER_PHASES, "ready"]
    assert loader_only_record.outcome == "ready"
    assert (loader_only_record.failed_phase, loader_only_record.reason) == (None, None)
    assert all(loader_only_record.phase(name) is None for name in OS_PHASES)


def test_loader_only_boot_ready_marker(loader_only_record: BootRecord) -> None:
    assert loader_only_record.os_version == "none"
    assert loader_only_record.ready_bytes("cache_bytes") == 0
    assert loader_only_record.ready_bytes("fetched_bytes") is None
    assert loader_only_record.guest_to_ready_s == 5.12
    assert loader_only_record.host_to_ready_s == 6.4
    assert loader_only_record.summary() == (
        "ready after 6.4 s host time (5.12 s guest uptime), accel kvm"
    )


# --- fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("", {}),
        (" status=ok iface=eth0", {"status": "ok", "iface": "eth0"}),
        (
            ' reason=no-disk detail="no free space" need_mb=256',
            {"reason": "no-disk", "detail": "no free space", "need_mb": "256"},
        ),
        (' detail="" dev=/dev/vda2', {"detail": "", "dev": "/dev/vda2"}),
        (" drivers=ahci,libata,sd_mod", {"drivers": "ahci,libata,sd_mod"}),
        (" cache_bytes=0 os=none", {"cache_bytes": "0", "os": "none"}),
        (
            ' status=ok snapshot="1.2 (0123456789ab)" cache_bytes=1048576',
            {"status": "ok", "snapshot": "1.2 (0123456789ab)", "cache_bytes": "1048576"},
        ),
        (
            " server=http://169.254.169.100/ "
            'detail="ucvm-blockd: server unreachable: '
            'http://169.254.169.100/manifest (5 attempts)"',
            {
                "server": "http://169.254.169.100/",
                "detail": "ucvm-blockd: server unreachable: "
                "http://169.254.169.100/manifest (5 attempts)",
            },
        ),
    ],
)
def test_parse_fields(text: str, fields: dict[str, str]) -> None:
    assert parse_fields(text) == fields


def test_quoted_field_of_a_failed_phase() -> None:
    text = console(
        START,
        MODULES,
        NETWORK,
        "ucvm: phase=scratch t=4.90 status=failed reason=no-disk need_mb=256 "
        'detail="no free space"',
    )
    record = record_from_console(text)
    scratch = record.phase("scratch")
    assert scratch is not None
    assert scratch.status == "failed"
    assert scratch.fields == {"reason": "no-disk", "need_mb": "256", "detail": "no free space"}
    assert record.reason == "no disk (need_mb=256, detail=no free space)"


@pytest.mark.parametrize(
    ("marker", "reason"),
    [
        pytest.param(
            "ucvm: phase=network t=16.31 status=failed reason=no-nic", "no nic", id="no-fields"
        ),
        pytest.param("ucvm: phase=network t=16.31 status=failed", "failed", id="no-reason"),
        pytest.param(
            "ucvm: phase=network t=16.31 status=failed iface=eth0",
            "failed (iface=eth0)",
            id="no-reason-with-fields",
        ),
    ],
)
def test_reason_of_a_failed_phase_without_detail(marker: str, reason: str) -> None:
    record = record_from_console(console(START, MODULES, marker))
    assert (record.outcome, record.failed_phase, record.reason) == ("failed", "network", reason)


# --- how a boot ends -------------------------------------------------------------------------

PANIC = (
    "[    1.634567] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
)
BREAK_NETWORK = "ucvm: break before phase=network (ucvm.break)"
REPO_UNREACHABLE = (
    "ucvm: phase=repo t=20.1 status=failed reason=repository-unreachable "
    'server=http://169.254.169.100/ detail="ucvm-blockd: server unreachable: '
    'http://169.254.169.100/manifest (5 attempts)"'
)


@pytest.mark.parametrize(
    ("text", "waited", "outcome", "failed_phase", "reason_has"),
    [
        pytest.param(
            console(
                START,
                MODULES,
                "ucvm: phase=network t=16.31 status=failed reason=no-dhcp "
                "iface=eth0 driver=virtio_net",
            ),
            None,
            "failed",
            "network",
            "no dhcp (iface=eth0, driver=virtio_net)",
            id="failed-network",
        ),
        pytest.param(
            console(
                START,
                MODULES,
                NETWORK,
                SCRATCH,
                REPO,
                'ucvm: phase=mount t=7.80 status=failed reason=snapshot-refused snapshot="1.2 '
                '(0123456789ab)" detail="its block list does not match the signed manifest"',
            ),
            None,
            "failed",
            "mount",
            "snapshot refused (snapshot=1.2 (0123456789ab), detail=its block list does not",
            id="failed-mount",
        ),
        pytest.param(
            console(PANIC),
            None,
            "panic",
            "start",
            "kernel panic: VFS: Unable to mount root fs",
            id="panic-before-markers",
        ),
        pytest.param(
            console(START, MODULES, PANIC),
            None,
            "panic",
            "network",
            "Unable to mount root fs on unknown-block(0,0)",
            id="panic-after-modules",
        ),
        pytest.param(
            console(START, MODULES, NETWORK, CONTEXT, SCRATCH, REPO, MOUNT, SWITCH_ROOT, PANIC),
            None,
            "panic",
            "ready",
            "kernel panic: VFS: Unable to mount root fs",
            id="panic-after-switch-root",
        ),
        pytest.param(
            console(START, MODULES),
            "timeout",
            "hang",
            "network",
            "stuck before phase network",
            id="hang",
        ),
        pytest.param(
            console(START, MODULES, NETWORK, CONTEXT, SCRATCH),
            "timeout",
            "hang",
            "repo",
            "stuck before phase repo",
            id="hang-after-scratch",
        ),
        pytest.param(
            console(START, MODULES, NETWORK, CONTEXT, SCRATCH, REPO, MOUNT, SWITCH_ROOT),
            "timeout",
            "hang",
            "ready",
            "no `ready` within the budget; stuck before phase ready",
            id="hang-in-the-os",
        ),
        pytest.param(
            console(START, MODULES, BREAK_NETWORK),
            "timeout",
            "hang",
            "network",
            "held by ucvm.break=network",
            id="hang-at-break",
        ),
        pytest.param(console(START), "gone", "gone", "modules", "stopped running", id="gone"),
        pytest.param(
            console(START, MODULES, NETWORK, CONTEXT, SCRATCH, REPO),
            "gone",
            "gone",
            "mount",
            "the guest stopped running before `ready`",
            id="gone-after-repo",
        ),
        pytest.param(
            console(START, MODULES, NETWORK),
            "domain vanished",
            "error",
            "context",
            "domain vanished",
            id="error",
        ),
        pytest.param(
            BANNER, "timeout", "hang", "start", "stuck before phase start", id="hang-before-start"
        ),
    ],
)
def test_outcome(
    text: str, waited: str | None, outcome: str, failed_phase: str, reason_has: str
) -> None:
    record = record_from_console(text, waited=waited)
    assert record.outcome == outcome
    assert not record.ready
    assert record.failed_phase == failed_phase
    assert record.reason is not None and reason_has in record.reason
    assert record.summary() == f"{outcome} in phase {failed_phase}: {record.reason}"


def test_repository_unreachable_fails_phase_repo() -> None:
    text = console(START, MODULES, NETWORK, CONTEXT, SCRATCH, REPO_UNREACHABLE)
    record = record_from_console(text, timeline_of(text))
    assert record.outcome == "failed"
    assert record.failed_phase == "repo"
    assert record.reason is not None and record.reason.startswith("repository unreachable (")
    assert record.reason == (
        "repository unreachable (server=http://169.254.169.100/, "
        "detail=ucvm-blockd: server unreachable: http://169.254.169.100/manifest (5 attempts))"
    )
    assert [p.name for p in record.phases] == [*LOADER_PHASES, "repo"]
    assert record.os_version is None


def test_failed_phase_wins_over_a_timeout() -> None:
    text = console(START, MODULES, "ucvm: phase=network t=16.31 status=failed reason=no-nic")
    record = record_from_console(text, waited="timeout")
    assert (record.outcome, record.failed_phase, record.reason) == ("failed", "network", "no nic")


def test_plain_hang_does_not_blame_a_break() -> None:
    record = record_from_console(console(START, MODULES), waited="timeout")
    assert "ucvm.break" not in (record.reason or "")


@pytest.mark.parametrize(
    ("printed", "pending"),
    [
        ([], "start"),
        *[([*PHASES[:n]], PHASES[n]) for n in range(1, len(PHASES))],
        (list(PHASES), "ready"),
        ([*LOADER_PHASES, "ready"], "ready"),
    ],
)
def test_next_phase_after(printed: list[str], pending: str) -> None:
    text = console(*(MARKERS[name] for name in printed))
    assert next_phase_after(record_from_console(text).phases) == pending


# ucvm.break works before every phase /init announces with `marker` (the OS prints `ready`).
@pytest.mark.parametrize("phase", [*LOADER_PHASES, *OS_PHASES])
def test_break_before_each_phase(phase: str) -> None:
    before = [MARKERS[name] for name in PHASES[: PHASES.index(phase)]]
    text = console(*before, f"ucvm: break before phase={phase} (ucvm.break)")
    record = record_from_console(text, waited="timeout")
    assert (record.outcome, record.failed_phase) == ("hang", phase)
    assert record.reason == (
        f"no `ready` within the budget; stuck before phase {phase} (held by ucvm.break={phase})"
    )


def test_break_before_the_loader_s_ready() -> None:
    text = console(
        START, MODULES, NETWORK, CONTEXT, SCRATCH, "ucvm: break before phase=ready (ucvm.break)"
    )
    record = record_from_console(text, waited="timeout")
    assert (record.outcome, record.failed_phase) == ("hang", "ready")


# --- markers mixed with kernel noise ----------------------------------------------------------


def test_a_marker_after_kernel_noise_on_the_same_line_is_not_read() -> None:
    """Markers count only at the start of a line: text before one on its line may be a value
    the guest was given. (Before the fix these markers were read: the forgeable behaviour.)"""
    text = console(
        START,
        "[    2.650000] random: crng init done" + MODULES,
        "[    4.201000] virtio_net virtio0 eth0: link up" + NETWORK,
        "[    4.580000] ISO 9660 Extensions: RRIP_1991A" + CONTEXT,
        SCRATCH,
        "[    5.290000] random: crng init done" + REPO,
        MOUNT,
        SWITCH_ROOT,
        "[   31.250000] audit: " + OS_READY,
    )
    record = record_from_console(text, waited="timeout")
    assert [p.name for p in record.phases] == ["start", "scratch", "mount", "switch_root"]
    assert record.outcome == "hang"


def test_kernel_noise_after_a_marker_keeps_name_time_and_status() -> None:
    noisy = NETWORK.replace(" ip=", "[    4.230000] random: crng init done ip=")
    record = record_from_console(console(START, MODULES, noisy))
    network = record.phase("network")
    assert network is not None
    assert (network.guest_s, network.status, network.fields["iface"]) == (4.22, "ok", "eth0")


def test_kernel_noise_does_not_leak_into_the_last_field() -> None:
    noisy = SCRATCH + "[    5.020000] EXT4-fs (vda2): mounted filesystem with ordered data mode."
    record = record_from_console(console(START, MODULES, NETWORK, CONTEXT, noisy))
    scratch = record.phase("scratch")
    assert scratch is not None
    assert scratch.fields["boots"] == "1"


def test_kernel_noise_does_not_leak_into_the_os_ready_marker() -> None:
    noisy = OS_READY + "[   31.250000] audit: type=1334 audit(1732494762.123:42): prog-id=12"
    record = record_from_console(
        console(START, MODULES, NETWORK, CONTEXT, SCRATCH, REPO, MOUNT, SWITCH_ROOT, noisy)
    )
    assert record.ready_field("units_failed") == "0"
    assert record.os_version == "1.2"


def test_a_line_that_only_mentions_ucvm_is_no_marker() -> None:
    text = console("[    0.000000] Command line: console=ttyS0 ucvm.break=network", START)
    assert [p.name for p in record_from_console(text).phases] == ["start"]


def test_kernel_noise_inside_a_quoted_value_is_part_of_it() -> None:
    line = 'ucvm: context step=hostname status=rejected value="x [    5.02] y" reason=bad'
    (step,) = record_from_console(console(START, line)).context_steps
    assert step.fields == {"value": "x [    5.02] y", "reason": "bad"}


# --- forged markers: what the guest was given must never read as a verdict ---------------------

FORGED_READY = "ucvm: phase=ready t=1.5 os=1.0 snapshot=0123456789ab z="


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(
            "ucvm: context step=cvmfs_server status=applied "
            f'value="http://10.0.2.2/a {FORGED_READY}" line=2',
            id="in-a-context-step",
        ),
        pytest.param(f"[   12.000000] systemd[1]: Hostname set to <{FORGED_READY}>", id="kernel"),
        pytest.param(f"x {FORGED_READY}", id="after-text"),
        pytest.param(f"x\r{FORGED_READY}", id="after-a-carriage-return"),
        pytest.param(f"x\u2028{FORGED_READY}", id="after-a-unicode-line-separator"),
    ],
)
def test_a_ready_marker_in_the_middle_of_a_line_is_no_verdict(line: str) -> None:
    text = console(START, MODULES, NETWORK, line, BREAK_NETWORK)
    record = record_from_console(text, waited="timeout")
    assert record.phase("ready") is None and record.outcome == "hang", record.phases
    wait_patterns = [re.compile(p, re.MULTILINE) for p in (observe.READY, observe.FAILURE)]
    timeline = Timeline()
    timeline.feed(text)
    for _, seen in timeline.lines:  # as Instance.wait_for sees the lines
        assert not any(p.search(seen) for p in wait_patterns), seen


@pytest.mark.parametrize(
    "line",
    [
        f"x {PANIC}",
        'ucvm: context step=x status=rejected value="ucvm: phase=net t=1 status=failed"',
    ],
)
def test_a_failure_in_the_middle_of_a_line_is_no_verdict(line: str) -> None:
    record = record_from_console(console(START, line), waited="timeout")
    assert record.outcome == "hang"
    assert not re.search(observe.FAILURE, line, re.MULTILINE)


def test_the_wait_patterns_match_the_guest_s_own_lines() -> None:
    assert re.search(observe.READY, OS_READY, re.MULTILINE)
    assert re.search(observe.READY, "\r" + LOADER_READY, re.MULTILINE)
    assert re.search(observe.FAILURE, PANIC, re.MULTILINE)
    assert re.search(observe.FAILURE, REPO_UNREACHABLE, re.MULTILINE)
    assert not re.search(observe.READY, "ucvm: phase=readyX t=1", re.MULTILINE)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r'"a\\b"', "a\\b"),
        (r'"say \"hi\""', 'say "hi"'),
        (r'"x\nucvm: phase=ready t=1.0"', "x\nucvm: phase=ready t=1.0"),
        (r'"\r\t\x01\x7f"', "\r\t\x01\x7f"),
        (r'"\xc3\xa9t\xc3\xa9"', "été"),  # bytes spelling UTF-8
        (r'"\q"', "q"),
    ],
)
def test_quoted_values_are_unescaped(text: str, value: str) -> None:
    assert parse_fields(f" v={text} next=1") == {"v": value, "next": "1"}


# --- the boot loader's contextualization: a line per step ---------------------------------------

UCERNVM_REJECTED = (
    "ucvm: context step=ucernvm status=rejected line={line} key=resize_rootfs value=sometimes "
    'reason="expected on or off"'
)


def test_ready_boot_context_steps(ready_record: BootRecord) -> None:
    assert ready_record.context_steps == [
        ContextStep("channel", "found", {"channel": "nocloud", "source": "/dev/sr0"}),
        ContextStep("hostname", "applied", {"value": "ucvm-t1-kvm"}),
        ContextStep("network", "applied", {"mode": "dhcp", "iface": "eth0"}),
        ContextStep("user-data", "handed-on", {"bytes": "212"}),
    ]
    context = ready_record.phase("context")
    assert context is not None and context.status == "ok"
    assert context.fields == {"channel": "nocloud", "applied": "2", "rejected": "0"}
    hostname = ready_record.context_step("hostname")
    assert hostname is not None and hostname.fields["value"] == "ucvm-t1-kvm"
    assert ready_record.context_step("cvmfs_tag") is None  # the user-data set no version


def test_context_step_is_the_last_line_of_that_step() -> None:
    text = console(
        START,
        MODULES,
        NETWORK,
        "ucvm: context step=channel status=found channel=config-drive source=/dev/sr0",
        UCERNVM_REJECTED.format(line=3),
        "ucvm: context step=cvmfs_tag status=applied value=1.1 line=4",
        UCERNVM_REJECTED.format(line=5),
        "ucvm: phase=context t=4.93 status=ok channel=config-drive applied=1 rejected=2",
    )
    record = record_from_console(text)
    assert [(s.step, s.status) for s in record.context_steps] == [
        ("channel", "found"),
        ("ucernvm", "rejected"),
        ("cvmfs_tag", "applied"),
        ("ucernvm", "rejected"),
    ]
    rejected = record.context_step("ucernvm")
    assert rejected is not None
    assert rejected.fields == {
        "line": "5",
        "key": "resize_rootfs",
        "value": "sometimes",
        "reason": "expected on or off",
    }
    tag = record.context_step("cvmfs_tag")
    assert tag is not None and tag.fields == {"value": "1.1", "line": "4"}
    assert [p.name for p in record.phases] == ["start", "modules", "network", "context"]


def test_a_context_step_is_no_phase() -> None:
    """Steps printed, the phase's marker not yet: the boot is still in phase context."""
    text = console(START, MODULES, NETWORK, *CONTEXT_STEPS)
    record = record_from_console(text, waited="timeout")
    assert [p.name for p in record.phases] == ["start", "modules", "network"]
    assert (record.outcome, record.failed_phase) == ("hang", "context")
    assert len(record.context_steps) == len(CONTEXT_STEPS)


def test_kernel_noise_does_not_leak_into_a_context_step() -> None:
    noisy = UCERNVM_REJECTED.format(line=3) + "[    4.571000] sr 0:0:0:0: Attached scsi CD-ROM sr0"
    record = record_from_console(console(START, MODULES, NETWORK, noisy))
    (step,) = record.context_steps
    assert (step.step, step.status) == ("ucernvm", "rejected")
    assert step.fields["reason"] == "expected on or off"
    assert list(step.fields) == ["line", "key", "value", "reason"]


def test_a_boot_without_a_channel() -> None:
    text = console(
        START,
        MODULES,
        NETWORK,
        'ucvm: context step=channel status=none detail="no medium and no metadata service"',
        "ucvm: phase=context t=4.31 status=ok channel=none",
        SCRATCH,
        LOADER_READY,
    )
    record = record_from_console(text)
    assert record.outcome == "ready"
    assert record.context_steps == [
        ContextStep("channel", "none", {"detail": "no medium and no metadata service"})
    ]
    assert record.phase_table().splitlines()[-1] == (
        "context channel: none detail=no medium and no metadata service"
    )


def test_a_context_step_without_fields_has_no_trailing_space_in_the_table() -> None:
    text = console(START, MODULES, NETWORK, "ucvm: context step=network status=applied")
    record = record_from_console(text)
    assert record.context_steps == [ContextStep("network", "applied", {})]
    assert record.phase_table().splitlines()[-1] == "context network: applied"


def test_to_json_carries_the_context_steps(ready_record: BootRecord) -> None:
    data = json.loads(ready_record.to_json())
    assert data["context_steps"] == [
        {
            "step": "channel",
            "status": "found",
            "fields": {"channel": "nocloud", "source": "/dev/sr0"},
        },
        {"step": "hostname", "status": "applied", "fields": {"value": "ucvm-t1-kvm"}},
        {"step": "network", "status": "applied", "fields": {"mode": "dhcp", "iface": "eth0"}},
        {"step": "user-data", "status": "handed-on", "fields": {"bytes": "212"}},
    ]


def test_guest_marker_parses(guest: Guest) -> None:
    line = guest.prints(
        'marker network status=ok iface=eth0 driver="virtio_net" '
        'ip="169.254.169.15" gw="169.254.169.2"'
    )
    record = record_from_console(line)
    assert [p.name for p in record.phases] == ["network"]
    assert record.phases[0].guest_s > 0
    assert record.phases[0].fields == {
        "iface": "eth0",
        "driver": "virtio_net",
        "ip": "169.254.169.15",
        "gw": "169.254.169.2",
    }


def test_guest_break_is_recognised(guest: Guest) -> None:
    guest.cmdline = "console=ttyS0 ucvm.break=network"
    text = guest.prints("marker start kernel=6.1; marker modules; marker network")
    record = record_from_console(text, waited="timeout")
    assert [p.name for p in record.phases] == ["start", "modules"]
    assert (record.outcome, record.failed_phase) == ("hang", "network")
    assert "ucvm.break=network" in (record.reason or "")


def test_guest_failure_is_recognised(guest: Guest) -> None:
    text = guest.prints("fail network no-dhcp iface=eth0 driver=virtio_net")
    record = record_from_console(text)
    assert (record.outcome, record.failed_phase) == ("failed", "network")
    assert record.reason == "no dhcp (iface=eth0, driver=virtio_net)"


def test_guest_failure_detail_with_spaces_survives(guest: Guest) -> None:
    # The very call phase_scratch makes when there is no disk for scratch.
    text = guest.prints(
        'min_mb=256; fail scratch no-disk need_mb="$min_mb" '
        'detail="no free space on the boot disk and no blank disk"'
    )
    record = record_from_console(text)
    scratch = record.phase("scratch")
    assert scratch is not None
    assert scratch.fields["detail"] == "no free space on the boot disk and no blank disk"
    assert record.reason == (
        "no disk (need_mb=256, detail=no free space on the boot disk and no blank disk)"
    )


# Values the guest was given (user-data, metadata), printed by the real fields(): one line,
# quoted and escaped, and read back exactly.
HOSTILE_VALUES = [
    pytest.param("x\nucvm: phase=ready t=1.0 os=1.0", id="multi-line-hostname"),
    pytest.param("http://10.0.2.2/a ucvm: phase=ready t=1.5 os=1.0 z=", id="marker-in-a-value"),
    pytest.param('a"b\\c "d', id="quotes-and-backslashes"),
    pytest.param("\r\ttab\x01\x1b[2J\x7f", id="control-bytes"),
    pytest.param("x\r\nucvm: phase=ready t=1.0\n", id="crlf-and-a-trailing-newline"),
    pytest.param("été \u2028 ucvm: phase=ready t=1", id="utf-8"),
    pytest.param("[    5.02] kernel-looking", id="a-kernel-stamp"),
    pytest.param("-n", id="an-echo-option"),
    pytest.param("\\n", id="a-literal-backslash-n"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_guest_context_step_prints_any_value_on_one_line(guest: Guest, value: str) -> None:
    text = guest.prints(
        'mkdir -p "$CONTEXT"\ncontext_step hostname rejected value="$VALUE" reason="not a name"',
        VALUE=value,
    )
    assert text.count("\n") == 1 and text.endswith("\n"), repr(text)
    assert "\r" not in text and "\x1b" not in text
    record = record_from_console(text, waited="timeout")
    assert record.phases == [] and record.outcome == "hang"
    (step,) = record.context_steps
    assert step.fields == {"value": value, "reason": "not a name"}


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_guest_marker_round_trips_any_value(guest: Guest, value: str) -> None:
    text = guest.prints('fail network no-dhcp iface="$VALUE" driver=virtio_net', VALUE=value)
    assert text.count("\n") == 1, repr(text)
    (phase,) = record_from_console(text).phases
    assert (phase.name, phase.status) == ("network", "failed")
    assert phase.fields == {"reason": "no-dhcp", "iface": value, "driver": "virtio_net"}


def test_guest_safe_words_stay_unquoted(guest: Guest) -> None:
    text = guest.prints("marker network drivers=a,b iface=eth0 ip=10.0.2.15 u=root@h/x:1+2")
    assert text.split(" ", 3)[3] == "drivers=a,b iface=eth0 ip=10.0.2.15 u=root@h/x:1+2\n"


def test_guest_a_long_value_is_cut_inside_its_quotes(guest: Guest) -> None:
    text = guest.prints('marker network detail="$VALUE" next=1', VALUE="a" * 5000)
    (phase,) = record_from_console(text).phases
    assert phase.fields == {"detail": "a" * 1024 + "...", "next": "1"}


KEY = "0f" * 32


def test_guest_channel_evaluates_nothing_before_the_key(guest: Guest) -> None:
    probe = "echo pwned\nwrong-key\n" + "e" * 64 + "\necho pwned again\n"
    assert guest.prints(f"channel_serve key {KEY}", stdin=probe) == ""


def test_guest_channel_evaluates_after_the_key_and_skips_it_later(guest: Guest) -> None:
    lines = f"echo before\n{KEY}\necho after\n{KEY}\nx=$((40 + 2)); echo $x\n"
    assert guest.prints(f"channel_serve key {KEY}", stdin=lines) == "after\n42\n"


def test_guest_channel_without_a_key_is_closed(guest: Guest) -> None:
    out = guest.prints('channel_serve key ""; echo "status=$?"', stdin="echo pwned\n\n")
    assert out == "status=1\n"


def test_guest_open_channel_evaluates_every_line(guest: Guest) -> None:
    assert guest.prints("channel_serve open", stdin="echo one\necho two\n") == "one\ntwo\n"


def test_guest_channel_key_comes_from_the_oem_strings_only(guest: Guest) -> None:
    guest.cmdline = f"console=ttyS0 ucvm.channel_key={'aa' * 32} ucvm.debug=no"
    out = guest.prints('boot_args; channel_key; echo "status=$?"; debug_boot; echo "debug=$?"')
    assert out == "status=1\ndebug=1\n"  # the kernel command line is every process's to read
    guest.smbios("11-0", smbios_oem_strings(f"ucvm.channel_key={KEY}", "ucvm.debug"))
    out = guest.prints('boot_args; channel_key; debug_boot; echo "debug=$?"')
    assert out == f"{KEY}\ndebug=1\n"  # ucvm.debug counts on the kernel command line only
    assert guest.file("run/ucvm/boot-args").stat().st_mode & 0o077 == 0


def test_guest_debug_boot_is_the_kernel_command_line_s_ucvm_debug(guest: Guest) -> None:
    guest.cmdline = "console=ttyS0 ucvm.debug"
    assert guest.prints('debug_boot; echo "debug=$?"') == "debug=0\n"


def test_guest_channel_key_never_reaches_the_console(guest: Guest) -> None:
    guest.smbios("11-0", smbios_oem_strings(f"ucvm.channel_key={KEY}", "ucvm.os=none"))
    out = guest.prints(
        'boot_args; marker start kernel=6.1 loader_version="$(cat /dev/null)"; '
        "fail scratch no-disk need_mb=256"
    )
    assert KEY not in out and "ucvm: phase=scratch" in out


# resolve_version and published read the manifest body (docs/os-on-demand.md).


@pytest.mark.parametrize(
    ("want", "prod", "tag"),
    [
        pytest.param("newest", "1.2", "1.2", id="newest"),
        pytest.param("", "1.2", "1.2", id="nothing-asked-is-newest"),
        pytest.param("newest", "1.1", "1.1", id="newest-after-a-rollback"),
        pytest.param("previous", "1.2", "1.1", id="previous-skips-other-branches"),
        pytest.param("previous", "1.1", "1.0", id="previous-after-a-rollback"),
        pytest.param("prod", "1.2", "1.2", id="branch-prod"),
        pytest.param("testing", "1.2", "1.3-rc1", id="branch-testing"),
        pytest.param("1.0", "1.2", "1.0", id="old-tag"),
        pytest.param("1.2-rc1", "1.2", "1.2-rc1", id="tag-of-another-branch"),
        pytest.param("previous", "1.3-rc1", "1.2", id="previous-when-prod-was-promoted"),
    ],
)
def test_guest_resolve_version(guest: Guest, want: str, prod: str, tag: str) -> None:
    guest.manifest = manifest(prod=prod)
    out = guest.prints(f'resolve_version "{want}" <"$FAKE_MANIFEST"; echo "status=$?"')
    assert out == f"{SNAPSHOT_LINES[tag]}\nstatus=0\n"
    # The lab computes what a cell should boot on the host: both sides must agree.
    body = manifest(prod=prod).rsplit("signature ", 1)[0].encode()
    assert Manifest.parse(body).resolve(want or "newest").tag == tag


@pytest.mark.parametrize(
    ("want", "prod"),
    [
        pytest.param("9.9", "1.2", id="unknown-tag"),
        pytest.param("stable", "1.2", id="unknown-branch"),
        pytest.param("previous", "1.0", id="nothing-before-the-first"),
        pytest.param("newest", "gone", id="head-not-a-snapshot"),
    ],
)
def test_guest_resolve_version_unknown(guest: Guest, want: str, prod: str) -> None:
    guest.manifest = manifest(prod=prod)
    out = guest.prints(f'resolve_version "{want}" <"$FAKE_MANIFEST"; echo "status=$?"')
    assert out == "status=1\n"


def test_guest_published(guest: Guest) -> None:
    out = guest.prints('published <"$FAKE_MANIFEST"')
    assert out == "tags: 1.0 1.1 1.2-rc1 1.2 1.3-rc1; branches: prod testing"


# boot_args: SMBIOS OEM strings beginning `ucvm.` join the kernel command line.


def test_guest_boot_args_from_smbios_oem_strings(guest: Guest) -> None:
    guest.smbios(
        "11-0",
        smbios_oem_strings("ucvm.version=1.1", "vendor=acme", "ucvm.repo=http://169.254.169.100/"),
    )
    guest.smbios("1-0", smbios_oem_strings("QEMU", "Standard PC", "ucvm.version=9.9"))
    out = guest.prints('boot_args; cmdline_arg ucvm.version; echo "status=$?"')
    assert out == "1.1\nstatus=0\n"
    boot_args = guest.file("run/ucvm/boot-args").read_text()
    assert boot_args == "ucvm.version=1.1\nucvm.repo=http://169.254.169.100/\n"


def test_guest_boot_args_of_several_type_11_entries(guest: Guest) -> None:
    guest.smbios("11-0", smbios_oem_strings("ucvm.version=1.1"))
    guest.smbios("11-1", smbios_oem_strings("ucvm.cache_max_mb=64"))
    out = guest.prints("boot_args; cmdline_arg ucvm.version; cmdline_arg ucvm.cache_max_mb")
    assert out == "1.1\n64\n"


def test_guest_kernel_command_line_wins_over_boot_args(guest: Guest) -> None:
    guest.cmdline = "console=ttyS0 ucvm.version=2.0"
    guest.smbios("11-0", smbios_oem_strings("ucvm.version=1.1"))
    assert guest.prints("boot_args; cmdline_arg ucvm.version") == "2.0\n"


def test_guest_without_oem_strings_has_no_boot_args(guest: Guest) -> None:
    out = guest.prints('boot_args; cmdline_arg ucvm.version; echo "status=$?"')
    assert out == "status=1\n"
    assert guest.file("run/ucvm/boot-args").read_text() == ""


# phase_repo: the manifest from the (fake) block client, the version to boot, the marker.


def repo_phase(guest: Guest) -> BootRecord:
    text = guest.prints("boot_args; phase_repo")
    record = record_from_console(text)
    assert [p.name for p in record.phases] == ["repo"], text
    return record


@pytest.mark.parametrize(
    ("cmdline", "oem", "pinned", "tag", "branch", "source"),
    [
        pytest.param("", None, None, "1.2", "prod", "newest", id="first-boot-newest"),
        pytest.param("", None, "1.1", "1.1", "prod", "pinned", id="pinned-at-an-earlier-boot"),
        pytest.param(
            "ucvm.version=testing", None, "1.1", "1.3-rc1", "testing", "requested",
            id="requested-branch-wins-over-pinned",
        ),
        pytest.param(
            "", "ucvm.version=previous", "1.2", "1.1", "prod", "requested",
            id="requested-by-boot-arg",
        ),
    ],
)  # fmt: skip
def test_guest_phase_repo(
    guest: Guest,
    cmdline: str,
    oem: str | None,
    pinned: str | None,
    tag: str,
    branch: str,
    source: str,
) -> None:
    guest.cmdline = f"console=ttyS0 {cmdline}"
    if oem:
        guest.smbios("11-0", smbios_oem_strings(oem))
    if pinned:
        guest.file("scratch/ucvm/pinned").write_text(f"{pinned}\n")
    record = repo_phase(guest)
    repo = record.phases[0]
    image_bytes = next(size for t, _, _, size in SNAPSHOTS if t == tag)
    assert repo.status == "ok"
    assert repo.fields == {
        "server": "http://169.254.169.100/",
        "tag": tag,
        "branch": branch,
        "source": source,
        "snapshot": sha(tag + ".img")[:12],
        "image_bytes": str(image_bytes),
        "policy": "rebase",
        "pinned": pinned or "-",
    }
    # The pin is written once the snapshot mounted (phase switch_root), not here; an older
    # loader's `pinned` file is imported as a pin that recorded no request.
    pin = guest.file("scratch/ucvm/pin")
    assert not guest.file("scratch/ucvm/pinned").exists()
    if pinned:
        assert f"tag={pinned}\n" in pin.read_text()
        assert "requested=?\n" in pin.read_text()
    else:
        assert not pin.exists()
    assert guest.file("scratch/ucvm/serial").read_text() == "9\n"  # the manifest's serial
    get, verify = guest.calls()
    assert get.startswith("get http://169.254.169.100/manifest ")
    assert f"--header X-Ucvm-Instance: {INSTANCE_UUID}" in get
    assert verify.startswith("verify /etc/ucvm/repo.pub ")


def test_guest_phase_repo_at_another_server(guest: Guest) -> None:
    guest.cmdline = "console=ttyS0 ucvm.repo=http://10.0.2.101:8080"
    record = repo_phase(guest)
    assert record.phases[0].fields["server"] == "http://10.0.2.101:8080/"
    assert guest.calls()[0].startswith("get http://10.0.2.101:8080/manifest ")


# The user-data's [ucernvm-begin] block (kept by the context phase in the context directory)
# chooses the version and the repository where no boot option does.


@pytest.mark.parametrize(
    ("cmdline", "oem", "pinned", "settings", "tag", "source"),
    [
        pytest.param(
            "", None, None, {"cvmfs_tag": "1.1"}, "1.1", "user-data", id="cvmfs_tag",
        ),
        pytest.param(
            "", None, None, {"cvmfs_branch": "testing"}, "1.3-rc1", "user-data",
            id="cvmfs_branch-is-its-head",
        ),
        pytest.param(
            "", None, None, {"cvmfs_tag": "1.0", "cvmfs_branch": "testing"}, "1.0", "user-data",
            id="cvmfs_tag-wins-over-cvmfs_branch",
        ),
        pytest.param(
            "", None, "1.2", {"cvmfs_tag": "previous"}, "1.1", "user-data",
            id="user-data-wins-over-pinned",
        ),
        pytest.param(
            "ucvm.version=1.0", None, None, {"cvmfs_tag": "1.1"}, "1.0", "requested",
            id="kernel-command-line-wins-over-user-data",
        ),
        pytest.param(
            "", "ucvm.version=testing", "1.2", {"cvmfs_tag": "1.1"}, "1.3-rc1", "requested",
            id="smbios-boot-option-wins-over-user-data",
        ),
    ],
)  # fmt: skip
def test_guest_phase_repo_version_from_the_user_data(
    guest: Guest,
    cmdline: str,
    oem: str | None,
    pinned: str | None,
    settings: dict[str, str],
    tag: str,
    source: str,
) -> None:
    guest.cmdline = f"console=ttyS0 {cmdline}"
    if oem:
        guest.smbios("11-0", smbios_oem_strings(oem))
    if pinned:
        guest.file("scratch/ucvm/pinned").write_text(f"{pinned}\n")
    guest.context(**settings)
    repo = repo_phase(guest).phases[0]
    assert repo.status == "ok"
    assert (repo.fields["tag"], repo.fields["source"]) == (tag, source)
    assert repo.fields["snapshot"] == sha(tag + ".img")[:12]
    assert repo.fields["server"] == "http://169.254.169.100/"  # no cvmfs_server: the default


@pytest.mark.parametrize(
    ("server", "url"),
    [
        pytest.param("169.254.169.101", "http://169.254.169.101/", id="host"),
        pytest.param("169.254.169.101:8080", "http://169.254.169.101:8080/", id="host-port"),
        pytest.param("http://169.254.169.101:8080", "http://169.254.169.101:8080/", id="url"),
        pytest.param(
            "http://repo.example.org/ucvm/", "http://repo.example.org/ucvm/", id="url-with-path"
        ),
    ],
)
def test_guest_phase_repo_at_the_user_data_s_server(guest: Guest, server: str, url: str) -> None:
    guest.context(cvmfs_server=server)
    repo = repo_phase(guest).phases[0]
    assert repo.status == "ok"
    assert repo.fields["server"] == url
    assert (repo.fields["tag"], repo.fields["source"]) == ("1.2", "newest")
    get, _ = guest.calls()
    assert get.startswith(f"get {url}manifest ")


def test_guest_boot_option_repo_wins_over_the_user_data_s_server(guest: Guest) -> None:
    guest.cmdline = "console=ttyS0 ucvm.repo=http://169.254.169.102:8080"
    guest.context(cvmfs_server="169.254.169.101")
    record = repo_phase(guest)
    assert record.phases[0].fields["server"] == "http://169.254.169.102:8080/"
    assert guest.calls()[0].startswith("get http://169.254.169.102:8080/manifest ")


def test_guest_unreachable_user_data_server_is_named(guest: Guest) -> None:
    guest.unreachable = True
    guest.context(cvmfs_server="169.254.169.101:8080")
    record = repo_phase(guest)
    assert (record.outcome, record.failed_phase) == ("failed", "repo")
    assert record.reason is not None
    assert record.reason.startswith("repository unreachable (server=http://169.254.169.101:8080/, ")


def test_guest_user_data_block_chooses_repository_and_version(guest: Guest) -> None:
    """From the user-data the channel gave to the repo marker: the context phase's
    apply_ucernvm keeps the block's keys, phase_repo uses them."""
    guest.file("context").mkdir()
    guest.file("context/user-data").write_text(
        "#cloud-config\n"
        "hostname: ignored-here\n"
        "[ucernvm-begin]\n"
        "cvmfs_server=169.254.169.101:8080\n"
        "cvmfs_tag=1.1\n"
        "[ucernvm-end]\n"
    )
    text = guest.prints(': >"$CONTEXT/steps"; apply_ucernvm; boot_args; phase_repo')
    record = record_from_console(text)
    assert record.context_steps == [
        ContextStep("cvmfs_server", "applied", {"value": "169.254.169.101:8080", "line": "4"}),
        ContextStep("cvmfs_tag", "applied", {"value": "1.1", "line": "5"}),
    ]
    (repo,) = record.phases
    assert (repo.name, repo.status) == ("repo", "ok")
    assert repo.fields["server"] == "http://169.254.169.101:8080/"
    assert (repo.fields["tag"], repo.fields["branch"], repo.fields["source"]) == (
        "1.1",
        "prod",
        "user-data",
    )
    steps = guest.file("context/steps").read_text()
    assert steps == "cvmfs_server applied\ncvmfs_tag applied\n"


def test_guest_context_step_and_marker_parse(guest: Guest) -> None:
    text = guest.prints(
        'mkdir -p "$CONTEXT"; '
        'context_step ucernvm rejected line=4 key=resize_rootfs reason="expected on or off"; '
        "context_step cvmfs_tag applied value=1.1 line=3; "
        "marker context status=ok channel=nocloud applied=1 rejected=1"
    )
    record = record_from_console(text, waited="timeout")
    assert record.context_steps == [
        ContextStep(
            "ucernvm",
            "rejected",
            {"line": "4", "key": "resize_rootfs", "reason": "expected on or off"},
        ),
        ContextStep("cvmfs_tag", "applied", {"value": "1.1", "line": "3"}),
    ]
    (context,) = record.phases
    assert (context.name, context.status) == ("context", "ok")
    assert context.fields == {"channel": "nocloud", "applied": "1", "rejected": "1"}
    assert guest.file("context/steps").read_text() == "ucernvm rejected\ncvmfs_tag applied\n"


def test_guest_phase_repo_unknown_version(guest: Guest) -> None:
    guest.cmdline = "console=ttyS0 ucvm.version=9.9"
    record = repo_phase(guest)
    assert (record.outcome, record.failed_phase) == ("failed", "repo")
    assert record.reason == (
        "unknown version (requested=9.9, "
        "available=tags: 1.0 1.1 1.2-rc1 1.2 1.3-rc1; branches: prod testing)"
    )
    assert not guest.file("scratch/ucvm/pinned").exists()


def test_guest_phase_repo_repository_unreachable(guest: Guest) -> None:
    guest.unreachable = True
    record = repo_phase(guest)
    assert (record.outcome, record.failed_phase) == ("failed", "repo")
    assert record.reason == (
        "repository unreachable (server=http://169.254.169.100/, "
        "detail=ucvm-blockd: server unreachable: http://169.254.169.100/manifest (5 attempts))"
    )


def test_guest_phase_repo_fetch_failure_fails_phase_repo(guest: Guest) -> None:
    guest.unreachable = True
    record = repo_phase(guest)
    assert (record.outcome, record.failed_phase) == ("failed", "repo")
    assert not guest.file("scratch/ucvm/pinned").exists()


# --- reports ---------------------------------------------------------------------------------


def test_phase_table_of_a_ready_boot(ready_record: BootRecord) -> None:
    table = ready_record.phase_table()
    rows = table.splitlines()
    # header, one row a phase, outcome, then one row a context step
    assert len(rows) == 1 + len(PHASES) + 1 + len(CONTEXT_STEPS)
    for row, name in zip(rows[1 : 1 + len(PHASES)], PHASES, strict=True):
        assert row.split()[0] == name
    assert "169.254.169.15" in rows[3]
    assert rows[4].split()[:4] == ["context", "4.60", "5.70", "ok"]
    assert "channel=nocloud applied=2 rejected=0" in rows[4]
    assert "tag=1.2 branch=prod" in rows[6]
    assert rows[9].split()[:4] == ["ready", "31.20", "33.60", "ok"]
    assert rows[10] == f"outcome: {ready_record.summary()}; OS: 1.2"
    assert rows[11:] == [
        "context channel: found channel=nocloud source=/dev/sr0",
        "context hostname: applied value=ucvm-t1-kvm",
        "context network: applied mode=dhcp iface=eth0",
        "context user-data: handed-on bytes=212",
    ]


def test_phase_table_of_a_loader_only_boot(loader_only_record: BootRecord) -> None:
    rows = loader_only_record.phase_table().splitlines()
    phase_rows = rows[1 : 2 + len(LOADER_PHASES)]
    assert [row.split()[0] for row in phase_rows] == [*LOADER_PHASES, "ready"]
    assert rows[2 + len(LOADER_PHASES)] == f"outcome: {loader_only_record.summary()}; OS: none"
    assert len(rows) == 3 + len(LOADER_PHASES) + len(CONTEXT_STEPS)


def test_phase_table_of_a_failed_boot() -> None:
    text = console(START, MODULES, "ucvm: phase=network t=16.31 status=failed reason=no-dhcp")
    rows = record_from_console(text).phase_table().splitlines()
    assert rows[3].split()[:4] == ["network", "16.31", "-", "failed"]
    assert rows[-1] == "outcome: failed in phase network: no dhcp; OS: -"


def test_phase_table_of_a_boot_that_failed_in_the_repository() -> None:
    text = console(START, MODULES, NETWORK, CONTEXT, SCRATCH, REPO_UNREACHABLE)
    rows = record_from_console(text).phase_table().splitlines()
    assert rows[-2].split()[:4] == ["repo", "20.10", "-", "failed"]
    assert rows[-1].startswith("outcome: failed in phase repo: repository unreachable (")
    assert rows[-1].endswith("; OS: -")


@pytest.mark.parametrize("waited", [None, "timeout"])
def test_to_json_round_trips(ready_record: BootRecord, waited: str | None) -> None:
    record = (
        ready_record
        if waited is None
        else record_from_console(console(START, MODULES), waited=waited)
    )
    data = json.loads(record.to_json())
    assert data["summary"] == record.summary()
    assert data["outcome"] == record.outcome
    assert data["failed_phase"] == record.failed_phase
    assert [p["name"] for p in data["phases"]] == [p.name for p in record.phases]
    assert [p["guest_s"] for p in data["phases"]] == [p.guest_s for p in record.phases]
    assert data["phases"][0]["fields"] == record.phases[0].fields
    assert "os_phase" not in data


def test_to_json_of_a_ready_boot_carries_host_times(ready_record: BootRecord) -> None:
    data = json.loads(ready_record.to_json())
    assert data["instance"] == "ucvm-t1-kvm"
    assert data["accel"] == "kvm"
    assert data["phases"][-1] == {
        "name": "ready",
        "guest_s": 31.2,
        "host_s": 33.6,
        "status": "ok",
        "fields": {
            "os": "1.2",
            "release": "1.2",
            "snapshot": "0123456789ab",
            "cache_bytes": "41943040",
            "fetched_bytes": "41943040",
            "evicted_blocks": "0",
            "units_failed": "0",
        },
    }


@pytest.mark.parametrize(
    ("lines", "os_version", "cache_bytes"),
    [
        pytest.param([LOADER_READY], "none", 0, id="loader-only"),
        pytest.param([REPO, MOUNT, SWITCH_ROOT, OS_READY], "1.2", 41943040, id="os-on-demand"),
        pytest.param(
            ["ucvm: phase=ready t=12.40 os=1.1 release=1.1 cache_bytes=0 units_failed=0"],
            "1.1",
            0,
            id="full-disk-baseline",
        ),
    ],
)
def test_os_version(lines: list[str], os_version: str, cache_bytes: int) -> None:
    text = console(START, MODULES, NETWORK, CONTEXT, SCRATCH, *lines)
    record = record_from_console(text, timeline_of(text))
    assert record.outcome == "ready"
    assert record.os_version == os_version
    assert record.ready_bytes("cache_bytes") == cache_bytes
    assert record.phase_table().endswith(f"; OS: {os_version}")


def test_no_os_version_before_ready() -> None:
    record = record_from_console(console(START, MODULES, NETWORK, CONTEXT, SCRATCH, REPO, MOUNT))
    assert record.os_version is None
    assert record.ready_field("cache_bytes") is None
    assert record.ready_bytes("cache_bytes") is None


# --- Timeline.feed ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(100.0)
    monkeypatch.setattr(base, "time", SimpleNamespace(monotonic=fake))
    return fake


def test_timeline_holds_back_a_partial_line(clock: FakeClock) -> None:
    timeline = Timeline(launched_at=100.0)
    text = "SeaBIOS (version 1.16.2)\r\nucvm: phase=sta"
    clock.now = 101.0
    timeline.feed(text)
    assert timeline.lines == [(1.0, "SeaBIOS (version 1.16.2)")]
    text += "rt t=1.63 kernel=6.1\r\n"
    clock.now = 102.5
    timeline.feed(text)
    assert timeline.lines == [
        (1.0, "SeaBIOS (version 1.16.2)"),
        (2.5, "ucvm: phase=start t=1.63 kernel=6.1"),
    ]


def test_timeline_does_not_repeat_lines(clock: FakeClock) -> None:
    timeline = Timeline(launched_at=100.0)
    text = "a\nb\n"
    timeline.feed(text)
    timeline.feed(text)
    clock.now = 103.0
    timeline.feed(text + "c\n")
    assert [line for _, line in timeline.lines] == ["a", "b", "c"]
    assert [t for t, _ in timeline.lines] == [0.0, 0.0, 3.0]


def test_timeline_keeps_empty_lines(clock: FakeClock) -> None:
    timeline = Timeline(launched_at=100.0)
    timeline.feed("a\r\n\r\nb\n")
    assert [line for _, line in timeline.lines] == ["a", "", "b"]


def test_timeline_times_are_monotonic_with_the_real_clock() -> None:
    timeline = Timeline()
    text = ""
    for line in BOOT_CONSOLE.splitlines(keepends=True):
        for half in (line[: len(line) // 2], line[len(line) // 2 :]):
            text += half
            timeline.feed(text)
    times = [t for t, _ in timeline.lines]
    assert [line for _, line in timeline.lines] == [line for _, line in BOOT_TIMELINE]
    assert times == sorted(times)
    assert times[0] >= 0


def test_timeline_feeds_record_from_console(clock: FakeClock) -> None:
    timeline = Timeline(launched_at=100.0)
    text = ""
    for host_s, line in BOOT_TIMELINE:
        clock.now = 100.0 + host_s
        text += line + "\r\n"
        timeline.feed(text)
    record = record_from_console(text, timeline.lines)
    assert [p.host_s for p in record.phases] == pytest.approx(
        [2.9, 4.0, 5.6, 5.7, 6.2, 6.9, 7.8, 7.9, 33.6]
    )
    assert record.os_version == "1.2"


def test_guest_refuses_a_manifest_older_than_one_seen_before(guest: Guest) -> None:
    guest.file("scratch/ucvm/serial").write_text("10\n")  # an earlier boot saw serial 10
    record = repo_phase(guest)
    assert (record.outcome, record.failed_phase) == ("failed", "repo")
    assert record.reason.startswith("manifest refused (")
    assert "serial 9 is older than 10" in record.reason


@pytest.mark.parametrize("uptime", ["1.2.3", ".", "1.", "x"])
def test_a_garbled_uptime_is_no_marker_rather_than_a_crash(uptime: str) -> None:
    record = record_from_console(f"ucvm: phase=start t={uptime}\nucvm: phase=ready t=2.5 os=x\n")
    assert [p.name for p in record.phases] == ["ready"]


# --- a two-phase boot (kexec) and the update notice ---------------------------------------------

KEXEC_LOAD = (
    "ucvm: phase=kexec t=5.01 status=ok step=load from=0.1 to=0.2 kernel=0123456789ab "
    "initrd=ba9876543210"
)
KEXEC_DONE = "ucvm: phase=kexec t=4.95 status=ok from=0.1 to=0.2"
PHASE_2_START = START.replace("loader_version=0.1", "loader_version=0.2").replace("1.63", "1.70")


def two_phase_console() -> str:
    loader = [MARKERS[name] for name in ("start", "modules", "network", "context", "scratch")]
    phase_2 = [PHASE_2_START, *loader[1:]]
    os_side = [MARKERS[name] for name in ("repo", "mount", "switch_root", "ready")]
    return "\n".join([*loader, KEXEC_LOAD, *phase_2, KEXEC_DONE, *os_side]) + "\n"


def test_a_two_phase_boot_is_recorded_with_both_kexec_markers() -> None:
    record = record_from_console(two_phase_console())
    assert record.ready
    assert [p.fields for p in record.phases_named("kexec")] == [
        {"step": "load", "from": "0.1", "to": "0.2", "kernel": "0123456789ab",
         "initrd": "ba9876543210"},
        {"from": "0.1", "to": "0.2"},
    ]  # fmt: skip
    start = record.phase("start")
    assert start is not None and start.fields["loader_version"] == "0.2"  # the boot that went on
    assert len(record.phases_named("start")) == 2


def test_a_hang_after_the_kexec_is_pending_at_the_next_plain_phase() -> None:
    loader = [MARKERS[name] for name in ("start", "modules", "network", "context", "scratch")]
    record = record_from_console("\n".join([*loader, KEXEC_LOAD]) + "\n", waited="timeout")
    assert (record.outcome, record.failed_phase) == ("hang", "repo")
    assert "kexec" in observe.OPTIONAL_PHASES and "kexec" not in PHASES


def test_update_findings_are_parsed_from_the_console() -> None:
    console = (
        "noise\nucvm: update status=available pinned=1.1 newest=1.2 loader=0.1->0.2 "
        "policy=rebase\nucvm: update status=unreachable server=http://169.254.169.100/\n"
        "echo ucvm: update status=forged\n"
    )
    assert observe.update_findings(console) == [
        {"status": "available", "pinned": "1.1", "newest": "1.2", "loader": "0.1->0.2",
         "policy": "rebase"},
        {"status": "unreachable", "server": "http://169.254.169.100/"},
    ]  # fmt: skip
