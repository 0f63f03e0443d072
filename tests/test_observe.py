"""Unit tests of lab.observe (console text -> BootRecord) and of Timeline.feed.

The console texts are what a real boot prints: SeaBIOS and SYSLINUX banners, kernel messages
with their `[    1.63]` uptime prefix, and the markers exactly as /init prints them
(lab/build/initramfs/init and functions).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab import observe
from lab.observe import PHASES, BootRecord, parse_fields, record_from_console
from lab.targets import base
from lab.targets.base import Timeline

FUNCTIONS = Path(observe.__file__).parent / "build" / "initramfs" / "functions"

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
    "ucvm: phase=network t=4.22 status=ok iface=eth0 driver=virtio_net ip=10.0.2.15 gw=10.0.2.2"
)
SCRATCH = "ucvm: phase=scratch t=4.90 status=ok dev=/dev/vda2 action=created size_mb=975 boots=1"
READY = "ucvm: phase=ready t=5.12 cache_bytes=0 os=not-run"

# A whole boot as (host seconds since launch, console line); kernel noise between markers.
BOOT_TIMELINE: list[tuple[float, str]] = [
    *[(0.4, line) for line in BANNER.splitlines()],
    (2.9, START),
    (3.3, "[    2.104311] virtio_blk virtio1: [vda] 28672 512-byte logical blocks (14.7 MB)"),
    (4.0, MODULES),
    (5.6, NETWORK),
    (5.9, "[    4.512000] EXT4-fs (vda2): mounted filesystem with ordered data mode."),
    (6.2, SCRATCH),
    (6.4, READY),
]
BOOT_CONSOLE = "".join(f"{line}\r\n" for _, line in BOOT_TIMELINE)


def console(*lines: str) -> str:
    """A console text: the banners, then ``lines``, each ended as a serial console ends it."""
    return BANNER + "".join(f"{line}\r\n" for line in lines)


def timeline_of(text: str) -> list[tuple[float, str]]:
    """A made-up timeline for ``text``: line n seen n/10 s after launch."""
    return [(n / 10, line) for n, line in enumerate(text.splitlines())]


# --- a boot that reaches ready ---------------------------------------------------------------


@pytest.fixture
def ready_record() -> BootRecord:
    return record_from_console(BOOT_CONSOLE, BOOT_TIMELINE, instance="ucvm-t1-kvm", accel="kvm")


def test_ready_boot_has_every_phase_in_order(ready_record: BootRecord) -> None:
    assert [p.name for p in ready_record.phases] == list(PHASES)
    assert ready_record.outcome == "ready"
    assert ready_record.ready
    assert (ready_record.failed_phase, ready_record.reason) == (None, None)


def test_ready_boot_guest_and_host_times(ready_record: BootRecord) -> None:
    assert [p.guest_s for p in ready_record.phases] == [1.63, 2.71, 4.22, 4.90, 5.12]
    assert [p.host_s for p in ready_record.phases] == [2.9, 4.0, 5.6, 6.2, 6.4]
    assert ready_record.guest_to_ready_s == 5.12
    assert ready_record.host_to_ready_s == 6.4


def test_ready_boot_fields(ready_record: BootRecord) -> None:
    network = ready_record.phase("network")
    assert network is not None
    assert network.status == "ok"
    assert network.fields == {
        "iface": "eth0",
        "driver": "virtio_net",
        "ip": "10.0.2.15",
        "gw": "10.0.2.2",
    }
    start = ready_record.phase("start")
    assert start is not None and start.fields["kernel"] == "6.1.0-28-cloud-amd64"
    modules = ready_record.phase("modules")
    assert modules is not None and modules.fields["drivers"].split(",")[-1] == "virtio_ring"
    ready = ready_record.phase("ready")
    assert ready is not None and ready.fields["cache_bytes"] == "0"
    assert ready_record.phase("os-mount") is None


def test_ready_summary(ready_record: BootRecord) -> None:
    assert ready_record.summary() == (
        "ready after 6.4 s host time (5.12 s guest uptime), accel kvm"
    )


def test_without_timeline_host_time_is_unknown() -> None:
    record = record_from_console(BOOT_CONSOLE)
    assert record.outcome == "ready"
    assert [p.name for p in record.phases] == list(PHASES)
    assert all(p.host_s is None for p in record.phases)
    assert record.host_to_ready_s is None


def test_ready_summary_without_timeline() -> None:
    record = record_from_console(BOOT_CONSOLE)
    assert "5.12 s guest uptime" in record.summary()
    assert "ready" in record.phase_table()


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
        (" cache_bytes=0 os=not-run", {"cache_bytes": "0", "os": "not-run"}),
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
    assert record.reason == "reason=no-disk need_mb=256 detail=no free space"


# --- how a boot ends -------------------------------------------------------------------------

PANIC = (
    "[    1.634567] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
)
BREAK_NETWORK = "ucvm: break before phase=network (ucvm.break)"


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
            "reason=no-dhcp",
            id="failed-network",
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
            console(START, MODULES),
            "timeout",
            "hang",
            "network",
            "stuck before phase network",
            id="hang",
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
            console(START, MODULES, NETWORK),
            "domain vanished",
            "error",
            "scratch",
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


def test_failed_phase_wins_over_a_timeout() -> None:
    text = console(START, MODULES, "ucvm: phase=network t=16.31 status=failed reason=no-nic")
    record = record_from_console(text, waited="timeout")
    assert (record.outcome, record.failed_phase) == ("failed", "network")


def test_plain_hang_does_not_blame_a_break() -> None:
    record = record_from_console(console(START, MODULES), waited="timeout")
    assert "ucvm.break" not in (record.reason or "")


@pytest.mark.parametrize("phase", PHASES)
def test_break_before_each_phase(phase: str) -> None:
    markers = {"start": START, "modules": MODULES, "network": NETWORK, "scratch": SCRATCH}
    before = [markers[name] for name in PHASES[: PHASES.index(phase)]]
    text = console(*before, f"ucvm: break before phase={phase} (ucvm.break)")
    record = record_from_console(text, waited="timeout")
    assert (record.outcome, record.failed_phase) == ("hang", phase)
    assert f"ucvm.break={phase}" in (record.reason or "")


# --- markers mixed with kernel noise ----------------------------------------------------------


def test_marker_after_kernel_noise_on_the_same_line() -> None:
    text = console(
        START,
        "[    2.650000] random: crng init done" + MODULES,
        "[    4.201000] virtio_net virtio0 eth0: link up" + NETWORK,
        SCRATCH,
        READY,
    )
    record = record_from_console(text)
    assert [p.name for p in record.phases] == list(PHASES)
    network = record.phase("network")
    assert network is not None
    assert network.guest_s == 4.22
    assert network.fields["gw"] == "10.0.2.2"


def test_kernel_noise_after_a_marker_keeps_name_time_and_status() -> None:
    noisy = NETWORK.replace(" ip=", "[    4.230000] random: crng init done ip=")
    record = record_from_console(console(START, MODULES, noisy))
    network = record.phase("network")
    assert network is not None
    assert (network.guest_s, network.status, network.fields["iface"]) == (4.22, "ok", "eth0")


def test_kernel_noise_does_not_leak_into_the_last_field() -> None:
    noisy = SCRATCH + "[    5.020000] EXT4-fs (vda2): mounted filesystem with ordered data mode."
    record = record_from_console(console(START, MODULES, NETWORK, noisy))
    scratch = record.phase("scratch")
    assert scratch is not None
    assert scratch.fields["boots"] == "1"


def test_a_line_that_only_mentions_ucvm_is_no_marker() -> None:
    text = console("[    0.000000] Command line: console=ttyS0 ucvm.break=network", START)
    assert [p.name for p in record_from_console(text).phases] == ["start"]


# --- the markers as the guest's shell functions print them -------------------------------------


def guest_prints(script: str) -> str:
    """Run ``script`` after sourcing the initramfs functions in busybox sh, the console being
    stdout; stay_up returns instead of sleeping forever."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    source = FUNCTIONS.read_text().replace("/dev/console", "/dev/stdout")
    prelude = """
stay_up() { exit 0; }
start_console_channel() { :; }
cmdline_arg() { [ "$1" = ucvm.break ] && [ -n "$BREAK" ] && echo "$BREAK"; }
"""
    result = subprocess.run(
        [busybox, "sh", "-c", f"{source}\n{prelude}\n{script}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout


def test_guest_marker_parses() -> None:
    line = guest_prints(
        'marker network status=ok iface=eth0 driver="virtio_net" ip="10.0.2.15" gw="10.0.2.2"'
    )
    record = record_from_console(line)
    assert [p.name for p in record.phases] == ["network"]
    assert record.phases[0].guest_s > 0
    assert record.phases[0].fields == {
        "iface": "eth0",
        "driver": "virtio_net",
        "ip": "10.0.2.15",
        "gw": "10.0.2.2",
    }


def test_guest_break_is_recognised() -> None:
    text = guest_prints("BREAK=network; marker start kernel=6.1; marker modules; marker network")
    record = record_from_console(text, waited="timeout")
    assert [p.name for p in record.phases] == ["start", "modules"]
    assert (record.outcome, record.failed_phase) == ("hang", "network")
    assert "ucvm.break=network" in (record.reason or "")


def test_guest_failure_is_recognised() -> None:
    text = guest_prints("fail network no-dhcp iface=eth0 driver=virtio_net")
    record = record_from_console(text)
    assert (record.outcome, record.failed_phase) == ("failed", "network")
    assert record.reason == "reason=no-dhcp iface=eth0 driver=virtio_net"


def test_guest_failure_detail_with_spaces_survives() -> None:
    # The very call phase_scratch makes when there is no disk for scratch.
    text = guest_prints(
        'min_mb=256; fail scratch no-disk need_mb="$min_mb" '
        'detail="no free space on the boot disk and no blank disk"'
    )
    record = record_from_console(text)
    scratch = record.phase("scratch")
    assert scratch is not None
    assert scratch.fields["detail"] == "no free space on the boot disk and no blank disk"


# --- reports ---------------------------------------------------------------------------------


def test_phase_table_of_a_ready_boot(ready_record: BootRecord) -> None:
    table = ready_record.phase_table()
    rows = table.splitlines()
    assert len(rows) == 1 + len(PHASES) + 1  # header, one row a phase, outcome
    for row, name in zip(rows[1:-1], PHASES, strict=True):
        assert row.split()[0] == name
    assert "10.0.2.15" in rows[3]
    assert rows[-1] == f"outcome: {ready_record.summary()}; OS phase: not-run"


def test_phase_table_of_a_failed_boot() -> None:
    text = console(START, MODULES, "ucvm: phase=network t=16.31 status=failed reason=no-dhcp")
    table = record_from_console(text).phase_table()
    assert "failed" in table.splitlines()[3]
    assert table.splitlines()[-1].startswith("outcome: failed in phase network: reason=no-dhcp")


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
    assert data["os_phase"] == "not-run"


def test_to_json_of_a_ready_boot_carries_host_times(ready_record: BootRecord) -> None:
    data = json.loads(ready_record.to_json())
    assert data["instance"] == "ucvm-t1-kvm"
    assert data["accel"] == "kvm"
    assert data["phases"][-1] == {
        "name": "ready",
        "guest_s": 5.12,
        "host_s": 6.4,
        "status": "ok",
        "fields": {"cache_bytes": "0", "os": "not-run"},
    }


@pytest.mark.parametrize(
    ("extra", "os_phase"),
    [
        ([], "not-run"),
        (["ucvm: phase=os-mount t=5.01 status=ok repo=cernvm-prod.cern.ch"], "run"),
    ],
)
def test_os_phase(extra: list[str], os_phase: str) -> None:
    text = console(START, MODULES, NETWORK, SCRATCH, *extra, READY)
    record = record_from_console(text, timeline_of(text))
    assert record.outcome == "ready"
    assert record.os_phase == os_phase
    assert record.phase_table().endswith(f"OS phase: {os_phase}")


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
    assert [p.host_s for p in record.phases] == pytest.approx([2.9, 4.0, 5.6, 6.2, 6.4])
