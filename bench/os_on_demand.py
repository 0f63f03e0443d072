"""OS on demand: the μCernVM-style boot against a conventional full-disk image of the same OS.

For the default release of releases.yaml (the head of its default branch), two subjects are
booted side by side in one run, interleaved round by round, on the kvm profile with the same
QEMU and the same memory:

- μCernVM: the boot loader image (the profile's qcow2, through the firmware), the release
  published into a fresh repository in the run's directory and served by nginx, asked for with
  `ucvm.version=TAG`. Every round is a new instance, so the cache starts cold.
- conventional: the same release as a full disk (ext4 in a compressed qcow2 with Debian's
  kernel and initramfs, bench/conventional.py's conventional_image), started by libvirt's direct
  kernel boot of its own kernel, initrd and command line (bench/full_disk.py's FullDiskTarget).

Per boot: host seconds to `ready`, the guest's uptime then, the bytes of the OS the boot
brought in (μCernVM: fetched from the repository, counted by the guest's block client and by
the server's access log, cross-checked; conventional: read from its disk, libvirt's block
stats right after `ready`), and the local disk reads of both. Image sizes are stat()ed and
compressed here. The paper's figures (CHEP 2013, Blomer et al.) are constants labelled
"paper"; DESIGN.md's budgets are printed as ratios with a verdict. Times are never judged.

    .venv/bin/python bench/os_on_demand.py [--repeat N] [--budget S] [--accel auto|kvm|tcg]
                                           [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from conventional import ConventionalImage, conventional_image
from full_disk import FullDisk, FullDiskTarget
from rich.console import Console
from rich.table import Table
from vms import (
    BENCH_ERRORS,
    add_boot_options,
    bench_run,
    other_vms,
    parse_boot_options,
    report_failure,
    signals_deferred,
    terminate,
)

from lab.artifacts import file_digest
from lab.build import releases, rootfs
from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader, build, gzip_size
from lab.build.osrepo.manifest import Snapshot
from lab.build.osrepo.repository import Repository
from lab.observe import BootRecord, observe_boot, settled_fetch_counts
from lab.services.repo import RepoServer
from lab.targets.base import TargetError
from lab.targets.libvirt import LibvirtInstance, LibvirtTarget
from lab.targets.libvirt.disks import base_virtual_size
from lab.targets.profiles import PROFILES

RUN_ROOT = Path("/var/tmp/ucvm-lab")
PROFILE = "kvm"
UCVM, CONVENTIONAL = "μCernVM", "conventional"
SETTLE_S = 10.0  # how long the cross-check waits for guest and server to agree

# --- the anchors: the paper's figures (CHEP 2013, Blomer et al.), not measurements -------------
MB = 10**6  # the paper's "MB", taken as 10^6 bytes (the stricter reading of a budget)
PAPER_LOADER_BYTES = 12 * MB  # paper: "a 12 MB boot loader image"
PAPER_OS_IMAGE_BYTES = 400 * MB  # paper: "instead of a ~400 MB" conventional OS image
PAPER_CACHE_BYTES = 100 * MB  # paper: "about 100 MB of OS cache after boot"
PAPER_BOOT = 'paper: boot "in seconds" (no figure given)'  # a label, not a measurement
# --- DESIGN.md's budgets ----------------------------------------------------------------------
BUDGET_LOADER_GZIP_BYTES = 12 * MB  # the compressed boot loader image <= 12 MB
BUDGET_CACHE_SHARE = 0.25  # OS cache after boot <= 25% of the OS snapshot's size


@dataclass
class Boot:
    subject: str
    round: int
    outcome: str  # ready | failed | panic | hang | gone | error (lab.observe), or wrong-os
    accel: str
    host_s: float | None
    guest_s: float | None
    others: int = 0  # other VMs running on the host when this one launched
    reason: str | None = None
    os: str | None = None  # the ready marker's os= (the tag booted)
    units_failed: int | None = None
    disk_read_bytes: int | None = None  # local disks, libvirt block stats right after ready
    # μCernVM only: the ready marker's counts (the guest's block client) ...
    cache_bytes: int | None = None
    fetched_bytes: int | None = None
    evicted_blocks: int | None = None
    # ... and the server's access log for this instance, read right after ready
    server_image_bytes: int | None = None
    server_body_bytes: int | None = None  # image + manifest + blocks list
    server_total_bytes: int | None = None  # the same with response headers
    server_requests: int | None = None
    server_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    settled: dict[str, float | int | str] | None = None  # a later reading if the two differed
    phases: list[dict] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.outcome == "ready"

    @property
    def brought_in(self) -> int | None:
        """The OS bytes this boot brought in by `ready`: fetched from the repository (μCernVM,
        the block client's count in the ready marker; the server's is the cross-check) or
        read from the disk (conventional)."""
        return self.fetched_bytes if self.subject == UCVM else self.disk_read_bytes


@dataclass
class Sizes:
    """The images, measured in this run."""

    release: str
    branch: str
    loader_root: str
    loader_kernel: str
    loader_format: str
    loader_bytes: int
    loader_gzip_bytes: int
    loader_virtual_bytes: int
    snapshot_sha256: str
    snapshot_bytes: int
    conventional_dir: str
    conventional_bytes: int
    conventional_virtual_bytes: int
    conventional_sha256: str
    conventional_kernel_bytes: int
    conventional_initrd_bytes: int
    conventional_cmdline: str


# --- booting -------------------------------------------------------------------------------


def boot_once(
    subject: str,
    launch: Callable[[], LibvirtInstance],
    after_ready: Callable[[LibvirtInstance, Boot], None],
    *,
    target: LibvirtTarget,
    tag: str,
    budget_s: float,
    round_no: int,
) -> Boot:
    others = other_vms(target)
    with contextlib.ExitStack() as stack:
        try:
            with signals_deferred():
                instance = stack.enter_context(launch())
        except TargetError as error:
            return Boot(subject, round_no, "error", "unknown", None, None, others, str(error))
        record = observe_boot(instance, budget_s)
        boot = boot_of(subject, round_no, record, others)
        if boot.ready:
            try:
                boot.disk_read_bytes = instance.disk_read_bytes()  # first: closest to `ready`
                after_ready(instance, boot)
            except TargetError as error:  # libvirt lost the VM: a failure to measure
                boot.outcome, boot.reason = "error", str(error)
            if boot.ready and boot.os != tag:
                boot.outcome = "wrong-os"
                boot.reason = f"booted os={boot.os}, asked for {tag}"
    return boot


def boot_of(subject: str, round_no: int, record: BootRecord, others: int) -> Boot:
    units_failed = record.ready_field("units_failed")
    return Boot(
        subject,
        round_no,
        record.outcome,
        record.accel,
        record.host_to_ready_s,
        record.guest_to_ready_s,
        others,
        record.reason,
        os=record.os_version,
        units_failed=int(units_failed) if units_failed and units_failed.isdigit() else None,
        cache_bytes=record.ready_bytes("cache_bytes") if subject == UCVM else None,
        fetched_bytes=record.ready_bytes("fetched_bytes") if subject == UCVM else None,
        evicted_blocks=record.ready_bytes("evicted_blocks") if subject == UCVM else None,
        phases=[
            {"name": p.name, "guest_s": p.guest_s, "host_s": p.host_s, "status": p.status}
            | ({"fields": p.fields} if p.fields else {})
            for p in record.phases
        ],
    )


def count_server(server: RepoServer, instance: LibvirtInstance, boot: Boot) -> None:
    """The server's side of the cross-check; if it differs from the guest's ready marker (a
    block in flight), read both again until they agree or SETTLE_S runs out."""
    sent = server.bytes_sent(instance.uuid)
    boot.server_image_bytes = sent.image_body_bytes
    boot.server_body_bytes = sent.body_bytes
    boot.server_total_bytes = sent.total_bytes
    boot.server_requests = sent.requests
    boot.server_by_kind = {
        kind: {"requests": t.requests, "body_bytes": t.body_bytes, "total_bytes": t.total_bytes}
        for kind, t in sorted(sent.by_kind.items())
    }
    if boot.fetched_bytes == boot.server_image_bytes:
        return
    try:
        guest, server_now, waited = settled_fetch_counts(
            instance, lambda: server.bytes_sent(instance.uuid).image_body_bytes, SETTLE_S
        )
    except TargetError as error:
        boot.settled = {"error": str(error)}
        return
    boot.settled = {
        "after_s": round(waited, 2),
        "guest_fetched_bytes": guest.get("fetched_bytes", -1),
        "guest_cached_bytes": guest.get("cached_bytes", -1),
        "server_image_bytes": server_now,
    }


def run_rounds(
    target: LibvirtTarget,
    loader: BootLoader,
    conventional: ConventionalImage,
    server: RepoServer,
    tag: str,
    args: argparse.Namespace,
    console: Console,
) -> list[Boot]:
    image_format = target.profile.image_format
    full_disk = FullDisk(
        conventional.qcow2, "qcow2", conventional.kernel, conventional.initrd, conventional.cmdline
    )
    # the same host, names and accelerator; it boots the full disk in the boot loader's place
    conventional_target = FullDiskTarget(target, full_disk, target.accelerator(loader))
    subjects: list[tuple[str, Callable[[], LibvirtInstance], Callable]] = [
        (
            UCVM,
            lambda: target.launch(
                loader,
                image_format=image_format,
                boot_args=[f"ucvm.version={tag}"],
                host_services={GUEST_REPO_ADDRESS: server.port},
            ),
            lambda instance, boot: count_server(server, instance, boot),
        ),
        (
            CONVENTIONAL,
            lambda: conventional_target.launch(loader),
            lambda _instance, _boot: None,
        ),
    ]
    boots = []
    for round_no in range(1, args.repeat + 1):
        for subject, launch, after_ready in subjects:
            boot = boot_once(
                subject, launch, after_ready,
                target=target, tag=tag, budget_s=args.budget, round_no=round_no,
            )  # fmt: skip
            boots.append(boot)
            console.log(progress_line(boot, args.repeat))
    return boots


def progress_line(boot: Boot, repeat: int) -> str:
    where = f"round {boot.round}/{repeat} {boot.subject}"
    if not boot.ready:
        return f"{where}: [red]{boot.outcome}[/red] ({boot.reason})"
    line = f"{where}: ready, host {boot.host_s:.2f} s, guest {boot.guest_s:.2f} s, "
    if boot.subject == UCVM:
        line += (
            f"fetched {mb(boot.fetched_bytes)} MB (server {mb(boot.server_image_bytes)} MB), "
            f"cache {mb(boot.cache_bytes)} MB, "
        )
    line += f"disk read {mb(boot.disk_read_bytes)} MB, {boot.accel}, {boot.others} other VM(s)"
    return line


# --- sizes ---------------------------------------------------------------------------------


def measure_sizes(
    loader: BootLoader,
    image_format: str,
    release: releases.Release,
    snapshot: Snapshot,
    conventional: ConventionalImage,
) -> Sizes:
    image, qemu_format = loader.disk_for_qemu(image_format)
    return Sizes(
        release=release.tag,
        branch=release.branch,
        loader_root=str(loader.root),
        loader_kernel=loader.kernel_release,
        loader_format=image_format,
        loader_bytes=loader.image(image_format).stat().st_size,
        loader_gzip_bytes=gzip_size(loader.image(image_format)),
        loader_virtual_bytes=base_virtual_size(image, qemu_format),
        snapshot_sha256=snapshot.image_sha256,
        snapshot_bytes=snapshot.image_bytes,
        conventional_dir=str(conventional.qcow2.parent),
        conventional_bytes=conventional.qcow2.stat().st_size,
        conventional_virtual_bytes=base_virtual_size(conventional.qcow2, "qcow2"),
        # its identity, and a first read: both images start the rounds in the page cache
        # (publishing hashed the snapshot, building the loader wrote its image)
        conventional_sha256=file_digest(conventional.qcow2),
        conventional_kernel_bytes=conventional.kernel.stat().st_size,
        conventional_initrd_bytes=conventional.initrd.stat().st_size,
        conventional_cmdline=conventional.cmdline,
    )


# --- figures -------------------------------------------------------------------------------


def mb(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value / MB:,.{digits}f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio(mine: float | None, base: float | None, digits: int = 3) -> str:
    if mine is None or not base:
        return "-"
    return f"{mine / base:.{digits}f}"


@dataclass
class Figures:
    """Medians (and minima) over the ready boots of each subject."""

    boots: list[Boot]

    def of(self, subject: str) -> list[Boot]:
        return [b for b in self.boots if b.subject == subject]

    def values(self, subject: str, pick: Callable[[Boot], float | None]) -> list[float]:
        picked = (pick(b) for b in self.of(subject) if b.ready)
        return [v for v in picked if v is not None]

    def median(self, subject: str, pick: Callable[[Boot], float | None]) -> float | None:
        values = self.values(subject, pick)
        return statistics.median(values) if values else None

    def minimum(self, subject: str, pick: Callable[[Boot], float | None]) -> float | None:
        return min(self.values(subject, pick), default=None)

    def pair(self, pick: Callable[[Boot], float | None]) -> tuple[float | None, float | None]:
        return self.median(UCVM, pick), self.median(CONVENTIONAL, pick)


def host_s(boot: Boot) -> float | None:
    return boot.host_s


def ready_count(boots: list[Boot]) -> str:
    return f"{sum(b.ready for b in boots)}/{len(boots)}"


def results_table(boots: list[Boot], sizes: Sizes, repeat: int) -> Table:
    f = Figures(boots)
    table = Table(
        title=f"OS on demand vs a conventional full-disk image: release {sizes.release}, "
        f"{PROFILE} profile, {repeat} round(s)" + (" (medians)" if repeat > 1 else "")
    )
    for column in ("", UCVM, CONVENTIONAL, f"{UCVM} ÷ {CONVENTIONAL}", "paper"):
        table.add_column(column, justify="left" if column in ("", "paper") else "right")
    paper_images = (
        f"{mb(PAPER_LOADER_BYTES, 0)} MB / ~{mb(PAPER_OS_IMAGE_BYTES, 0)} MB = "
        f"{PAPER_LOADER_BYTES / PAPER_OS_IMAGE_BYTES:.3f}"
    )
    table.add_row(
        "image, MB (qcow2 file)",
        mb(sizes.loader_bytes),
        mb(sizes.conventional_bytes),
        ratio(sizes.loader_bytes, sizes.conventional_bytes),
        paper_images,
    )
    table.add_row(
        "disk, MB (virtual size)",
        mb(sizes.loader_virtual_bytes),
        mb(sizes.conventional_virtual_bytes),
        ratio(sizes.loader_virtual_bytes, sizes.conventional_virtual_bytes),
        "-",
    )
    brought = f.pair(lambda b: b.brought_in)
    table.add_row(
        "OS fetched (μCernVM) / read from disk (conv.) at boot, MB",
        mb(brought[0]),
        mb(brought[1]),
        ratio(*brought),
        f"~{mb(PAPER_CACHE_BYTES, 0)} MB of cache / -",
    )
    server = f.pair(lambda b: b.server_image_bytes)
    table.add_row("  the same, counted by the server, MB", mb(server[0]), "-", "-", "-")
    cache = f.pair(lambda b: b.cache_bytes)
    table.add_row("OS cache after boot, MB", mb(cache[0]), "0 (no cache)", "-",
                  f"~{mb(PAPER_CACHE_BYTES, 0)} MB / -")  # fmt: skip
    disk = f.pair(lambda b: b.disk_read_bytes)
    table.add_row("local disk reads at boot, MB", mb(disk[0]), mb(disk[1]), ratio(*disk), "-")
    host = f.pair(host_s)
    table.add_row(
        "time to ready, host s", seconds(host[0]), seconds(host[1]), ratio(*host, 2),
        'boot "in seconds"',
    )  # fmt: skip
    if repeat > 1:
        lows = f.minimum(UCVM, host_s), f.minimum(CONVENTIONAL, host_s)
        table.add_row("time to ready, host s (min)", seconds(lows[0]), seconds(lows[1]),
                      ratio(*lows, 2), "-")  # fmt: skip
    guest = f.pair(lambda b: b.guest_s)
    table.add_row("guest uptime at ready, s", seconds(guest[0]), seconds(guest[1]),
                  ratio(*guest, 2), "-")  # fmt: skip
    others = max((b.others for b in boots), default=0)
    table.add_row("boots ready", ready_count(f.of(UCVM)), ready_count(f.of(CONVENTIONAL)), "-",
                  "-")  # fmt: skip
    table.caption = (
        f"{UCVM}: the boot loader's {sizes.loader_format} image through the firmware, the OS "
        f"fetched from this run's repository (snapshot {mb(sizes.snapshot_bytes)} MB); fetched: "
        "the block client's count in the ready marker; the server's: image bytes its access log "
        f"shows sent to this instance, read after `ready`. {CONVENTIONAL}: ext4 root in a qcow2, "
        "direct kernel boot of its own kernel and initrd; read: libvirt's rd_bytes right after "
        "`ready`. Local disk reads: every disk of the VM (the loader's image and scratch for "
        f"{UCVM}). host s: launch to `ready` on the host clock. Most VMs already running at a "
        f"launch: {others}. The paper's figures (CHEP 2013) are constants; {PAPER_BOOT}."
    )
    return table


@dataclass
class Budget:
    what: str
    measured: str
    anchor: str
    ratio: float | None
    limit: float | None  # None: an anchor to compare with, not a budget
    note: str = ""

    @property
    def within(self) -> str:
        if self.ratio is None:
            return "-" if self.limit is None else "not measured"
        if self.limit is None:
            return "-"
        return "yes" if self.ratio <= self.limit else "NO"


def budgets(boots: list[Boot], sizes: Sizes) -> list[Budget]:
    f = Figures(boots)
    fetched, _ = f.pair(lambda b: b.brought_in)
    cache, _ = f.pair(lambda b: b.cache_bytes)
    host = f.pair(host_s)
    share = fetched / sizes.snapshot_bytes if fetched is not None else None
    return [
        Budget(
            "boot loader image, gzip -6 (DESIGN.md: <= 12 MB)",
            f"{mb(sizes.loader_gzip_bytes)} MB",
            f"{mb(BUDGET_LOADER_GZIP_BYTES, 0)} MB (paper)",
            sizes.loader_gzip_bytes / BUDGET_LOADER_GZIP_BYTES,
            1.0,
        ),
        Budget(
            "conventional image vs the paper's",
            f"{mb(sizes.conventional_bytes)} MB",
            f"~{mb(PAPER_OS_IMAGE_BYTES, 0)} MB (paper)",
            sizes.conventional_bytes / PAPER_OS_IMAGE_BYTES,
            None,
        ),
        Budget(
            "OS fetched at boot ÷ snapshot (DESIGN.md: <= 25%)",
            f"{mb(fetched)} of {mb(sizes.snapshot_bytes)} MB",
            f"{BUDGET_CACHE_SHARE:.0%} of the snapshot",
            share,
            BUDGET_CACHE_SHARE,
        ),
        Budget(
            "OS cache after boot vs the paper's",
            f"{mb(cache)} MB",
            f"~{mb(PAPER_CACHE_BYTES, 0)} MB (paper)",
            cache / PAPER_CACHE_BYTES if cache is not None else None,
            None,
        ),
        Budget(
            "time to ready vs conventional (DESIGN.md: measured against it)",
            f"{seconds(host[0])} s vs {seconds(host[1])} s",
            "conventional, this run",
            host[0] / host[1] if None not in host and host[1] else None,
            None,
            "times are printed, never judged",
        ),
    ]


def budget_table(rows: list[Budget]) -> Table:
    table = Table(title="Budgets (DESIGN.md) and the paper's anchors")
    for column in ("", "measured", "anchor", "ratio", "within"):
        table.add_column(column, justify="left" if column in ("", "anchor") else "right")
    for row in rows:
        shown = "-" if row.ratio is None else f"{row.ratio:.3f}"
        table.add_row(row.what, row.measured, row.anchor, shown, row.within)
    table.caption = "within: ratio <= the budget's limit; '-' where the anchor sets no limit."
    return table


KIND_NAMES = {"blocks": "block hashes", "image": "snapshot image"}


def kind_order(item: tuple[str, dict[str, int]]) -> int:
    order = ("manifest", "blocks", "image")
    return order.index(item[0]) if item[0] in order else len(order)


def cross_check_lines(boots: list[Boot]) -> list[str]:
    lines = []
    for boot in boots:
        if boot.subject != UCVM or not boot.ready:
            continue
        guest, server = boot.fetched_bytes, boot.server_image_bytes
        head = f"round {boot.round}: guest fetched {guest:,} B (ready marker), server sent "
        head += f"{server:,} B of image: "
        if guest == server:
            head += "equal"
        else:
            head += f"differ by {abs((server or 0) - (guest or 0)):,} B"
            settled = boot.settled or {}
            if "error" in settled:
                head += f"; read again: {settled['error']}"
            elif settled:
                again = settled["guest_fetched_bytes"], settled["server_image_bytes"]
                verdict = (
                    "equal" if again[0] == again[1] else f"differ by {again[1] - again[0]:,} B"
                )
                head += (
                    f"; read again {settled['after_s']} s later: guest {again[0]:,} B, "
                    f"server {again[1]:,} B ({verdict})"
                )
        kinds = ", ".join(
            f"{KIND_NAMES.get(kind, kind)} {t['body_bytes']:,} B ({t['requests']} req.)"
            for kind, t in sorted(boot.server_by_kind.items(), key=kind_order)
        )
        lines.append(
            f"{head}. Sent in all: {kinds}; {boot.server_body_bytes:,} B of bodies, "
            f"{boot.server_total_bytes:,} B with headers. Guest cache {boot.cache_bytes:,} B, "
            f"{boot.evicted_blocks} block(s) evicted."
        )
    return lines


def phase_lines(boots: list[Boot]) -> list[str]:
    """Each subject's markers: the guest's uptime at each, median over the ready boots."""
    lines = []
    for subject in (UCVM, CONVENTIONAL):
        at: dict[str, list[float]] = {}
        for boot in (b for b in boots if b.subject == subject and b.ready):
            for phase in boot.phases:
                at.setdefault(phase["name"], []).append(phase["guest_s"])
        if at:
            marks = ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in at.items())
            lines.append(f"{subject}: {marks}")
    return lines


def to_json(boots: list[Boot], sizes: Sizes, args: argparse.Namespace) -> dict:
    f = Figures(boots)
    return {
        "benchmark": "os_on_demand",
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "profile": PROFILE,
        "repeat": args.repeat,
        "budget_s": args.budget,
        "sizes": asdict(sizes),
        "paper": {
            "loader_bytes": PAPER_LOADER_BYTES,
            "os_image_bytes": PAPER_OS_IMAGE_BYTES,
            "cache_after_boot_bytes": PAPER_CACHE_BYTES,
            "boot": PAPER_BOOT,
        },
        "budgets": [asdict(b) | {"within": b.within} for b in budgets(boots, sizes)],
        "medians": {
            subject: {
                "host_s": f.median(subject, host_s),
                "host_s_min": f.minimum(subject, host_s),
                "guest_s": f.median(subject, lambda b: b.guest_s),
                "brought_in_bytes": f.median(subject, lambda b: b.brought_in),
                "server_image_bytes": f.median(subject, lambda b: b.server_image_bytes),
                "disk_read_bytes": f.median(subject, lambda b: b.disk_read_bytes),
                "cache_bytes": f.median(subject, lambda b: b.cache_bytes),
                "ready": ready_count(f.of(subject)),
            }
            for subject in (UCVM, CONVENTIONAL)
        },
        "boots": [asdict(b) for b in boots],
    }


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Boot the default release μCernVM-style (boot loader + OS fetched on "
        "demand) and as a conventional full-disk image, side by side in one run, and print "
        "image sizes, bytes fetched or read at boot and time to `ready`, as ratios, beside "
        "the paper's figures and DESIGN.md's budgets."
    )
    add_boot_options(
        parser,
        repeat=3,
        repeat_help="rounds, one boot of each subject per round (default 3); the table gives "
        "medians",
        budget_s=300.0,
    )
    return parse_boot_options(parser, argv)


def measure(args: argparse.Namespace, console: Console) -> tuple[list[Boot], Sizes]:
    release = releases.load_release_set().default
    with console.status("building (or finding) the boot loader"):
        loader = build()
    console.log(f"boot loader {loader.root}, kernel {loader.kernel_release}")
    with console.status(f"building (or finding) release {release.tag}, both ways"):
        artifact = rootfs.build_release(release)
        conventional = conventional_image(release)
    console.log(f"release {release.tag} ({release.branch}): {artifact.squashfs}, "
                f"{conventional.qcow2}")  # fmt: skip
    with bench_run(RUN_ROOT, console) as run:
        repository = Repository(run.dir / "osrepo")
        repository.init("ucvm-bench", default_branch=release.branch)
        snapshot = repository.publish(artifact.squashfs, release.tag, release.branch)
        target = LibvirtTarget(f"bench-{PROFILE}", PROFILES[PROFILE], {}, run, accel=args.accel)
        ok, why = target.available()
        if not ok:
            raise TargetError(f"the {PROFILE} profile cannot run here: {why}")
        with console.status("deciding the accelerator"):
            accel, why = target.accelerator(loader)
        sizes = measure_sizes(loader, target.profile.image_format, release, snapshot, conventional)
        with RepoServer(repository.root, run.dir / "nginx") as server:
            console.log(
                f"run {run.id}: {accel} ({why}); repository {server.url}, snapshot "
                f"{snapshot.image_sha256[:12]} ({snapshot.image_bytes:,} B); {args.repeat} round(s)"
            )
            boots = run_rounds(target, loader, conventional, server, release.tag, args, console)
        return boots, sizes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        boots, sizes = measure(args, console)
    except (KeyboardInterrupt, *BENCH_ERRORS) as error:
        return report_failure(console, error)
    console.print(results_table(boots, sizes, args.repeat))
    console.print(budget_table(budgets(boots, sizes)))
    console.print("Guest uptime at each marker, s (median):")
    for line in phase_lines(boots):
        console.print(f"  {line}", highlight=False)
    console.print("Cross-check, what the guest fetched against what the server sent it:")
    for line in cross_check_lines(boots) or ["no μCernVM boot reached `ready`"]:
        console.print(f"  {line}", highlight=False)
    for boot in boots:
        if not boot.ready:
            console.print(f"[red]{boot.subject} round {boot.round}: {boot.outcome}[/red] "
                          f"({boot.reason})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(to_json(boots, sizes, args), indent=2) + "\n")
        console.print(f"figures saved to {args.json}")
    return 0 if all(b.ready for b in boots) else 1


if __name__ == "__main__":
    sys.exit(main())
