"""Boot time: each platform profile booted from its own image format through the firmware,
against a direct kernel boot of the same kernel and initramfs measured in the same run.

Per profile that can run here: host seconds from launch to the guest's `ready` marker, the
guest's uptime at `ready`, the accelerator (kvm or tcg), and the ratio to the anchor. The
anchor is the kvm profile booted with no firmware at all (libvirt's direct kernel boot, the
same kernel command line): a profile's ratio shows what its firmware, boot loader and devices
cost. Boots are interleaved round by round (anchor first), so a busy host slows both sides.
The paper's own figure, boot "in seconds", is a word, not a number: it is printed as a label.
Every boot runs the boot loader alone (`ucvm.os=none`): the OS is os_on_demand.py's subject.

    .venv/bin/python bench/boot_time.py [--profiles kvm,vmware] [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from vms import (
    BENCH_ERRORS,
    add_boot_options,
    destroy_leftovers,
    other_vms,
    parse_boot_options,
    report_failure,
    signals_deferred,
    terminate,
)

from lab.build.bootloader import BootLoader, build
from lab.observe import observe_boot
from lab.run import Run, new_run_id
from lab.targets.base import TargetError
from lab.targets.libvirt import LibvirtTarget
from lab.targets.profiles import PROFILES, Profile

RUN_ROOT = Path("/var/tmp/ucvm-lab")
ANCHOR_PROFILE = "kvm"
LOADER_ONLY = "ucvm.os=none"  # the boot loader's own `ready`: no repository, no OS
ANCHOR_LABEL = "anchor"
PAPER_BOOT = 'paper: boot "in seconds" (no figure given)'  # a constant label, not a measurement


@dataclass
class Subject:
    """One row of the table: a profile and how it boots."""

    label: str
    profile: Profile
    target: LibvirtTarget
    image_format: str | None = None  # None with direct kernel boot
    kernel_args: str | None = None  # not None: direct kernel boot, no firmware

    @property
    def via(self) -> str:
        return "direct kernel" if self.kernel_args is not None else "firmware"


@dataclass
class Boot:
    label: str
    round: int
    outcome: str
    accel: str
    host_s: float | None
    guest_s: float | None
    others: int = 0  # other VMs running on the host when this one launched
    reason: str | None = None
    phases: list[dict] = field(default_factory=list)


@dataclass
class Row:
    label: str
    platform: str
    via: str
    image_format: str
    boots: list[Boot]
    skipped: str = ""

    @property
    def ready(self) -> list[Boot]:
        return [b for b in self.boots if b.outcome == "ready"]

    def host(self, pick: str = "median") -> float | None:
        values = [b.host_s for b in self.ready if b.host_s is not None]
        if not values:
            return None
        return min(values) if pick == "min" else statistics.median(values)

    def guest(self) -> float | None:
        values = [b.guest_s for b in self.ready if b.guest_s is not None]
        return statistics.median(values) if values else None

    def before_clock(self) -> float | None:
        """Host seconds before the guest's clock started: QEMU's start, the firmware, the boot
        loader reading the kernel and initramfs, the kernel's decompression."""
        values = [
            b.host_s - b.guest_s
            for b in self.ready
            if b.host_s is not None and b.guest_s is not None
        ]
        return statistics.median(values) if values else None


# --- booting -------------------------------------------------------------------------------


def boot_once(subject: Subject, loader: BootLoader, budget_s: float, round_no: int) -> Boot:
    others = other_vms(subject.target)
    with contextlib.ExitStack() as stack:
        try:
            with signals_deferred():
                instance = stack.enter_context(
                    subject.target.launch(
                        loader,
                        image_format=subject.image_format,
                        kernel_args=subject.kernel_args,
                        boot_args=[LOADER_ONLY],
                    )
                )
        except TargetError as error:
            return Boot(subject.label, round_no, "error", "unknown", None, None, others, str(error))
        record = observe_boot(instance, budget_s)
    phases = [
        {"name": p.name, "guest_s": p.guest_s, "host_s": p.host_s, "status": p.status}
        for p in record.phases
    ]
    return Boot(
        subject.label,
        round_no,
        record.outcome,
        record.accel,
        record.host_to_ready_s,
        record.guest_to_ready_s,
        others,
        record.reason,
        phases,
    )


def make_subjects(names: list[str], run: Run, accel: str) -> tuple[list[Subject], list[Row]]:
    """The anchor and the profiles that can run here; rows for those that cannot."""
    anchor_profile = PROFILES[ANCHOR_PROFILE]
    anchor = Subject(
        ANCHOR_LABEL,
        anchor_profile,
        LibvirtTarget("bench-anchor", anchor_profile, {}, run, accel=accel),
        kernel_args="",
    )
    ok, why = anchor.target.available()
    if not ok:
        raise TargetError(f"the anchor ({ANCHOR_PROFILE} profile) cannot run here: {why}")
    subjects, skipped = [anchor], []
    for name in names:
        profile = PROFILES[name]
        target = LibvirtTarget(f"bench-{name}", profile, {}, run, accel=accel)
        ok, why = (False, profile.not_emulated) if profile.not_emulated else target.available()
        if ok:
            subjects.append(Subject(name, profile, target, image_format=profile.image_format))
        else:
            skipped.append(Row(name, profile.platform, "-", profile.image_format, [], why))
    return subjects, skipped


def run_rounds(
    subjects: list[Subject], loader: BootLoader, repeat: int, budget_s: float, console: Console
) -> list[Row]:
    rows = {
        s.label: Row(s.label, s.profile.platform, s.via, s.image_format or "vmlinuz+initrd", [])
        for s in subjects
    }
    for round_no in range(1, repeat + 1):
        for subject in subjects:
            boot = boot_once(subject, loader, budget_s, round_no)
            rows[subject.label].boots.append(boot)
            console.log(progress_line(boot, repeat))
    return list(rows.values())


def progress_line(boot: Boot, repeat: int) -> str:
    where = f"round {boot.round}/{repeat} {boot.label}"
    if boot.outcome != "ready":
        return f"{where}: [red]{boot.outcome}[/red] ({boot.reason})"
    return (
        f"{where}: ready, host {boot.host_s:.2f} s, guest {boot.guest_s:.2f} s, "
        f"{boot.accel}, {boot.others} other VM(s) running"
    )


# --- printing ------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def ratio_to(row: Row, anchor: Row) -> str:
    mine, base = row.host(), anchor.host()
    if mine is None or base is None:
        return "-"
    return f"{mine / base:.2f}"


def outcome(row: Row) -> str:
    if row.skipped:
        return "skipped (see below)"
    failed = [b for b in row.boots if b.outcome != "ready"]
    text = f"{len(row.ready)}/{len(row.boots)} ready"
    return text + (f"; {failed[0].outcome}: {failed[0].reason}" if failed else "")


def results_table(rows: list[Row], repeat: int) -> Table:
    many = repeat > 1
    table = Table(title=f"Boot to `ready`, {repeat} boot(s) each" + (" (medians)" if many else ""))
    columns = ["profile", "platform", "boots via", "format", "accel", "host s"]
    columns += ["host s min"] if many else []
    columns += ["guest s", "host - guest s", "÷ anchor", "other VMs", "outcome"]
    for column in columns:
        left = column in ("profile", "platform", "boots via", "format", "accel", "outcome")
        table.add_column(column, justify="left" if left else "right")
    anchor = rows[0]
    for row in rows:
        accels = ",".join(sorted({b.accel for b in row.boots})) or "-"
        cells = [row.label, row.platform, row.via, row.image_format, accels, seconds(row.host())]
        cells += [seconds(row.host("min"))] if many else []
        others = max((b.others for b in row.boots), default=None)
        cells += [
            seconds(row.guest()),
            seconds(row.before_clock()),
            ratio_to(row, anchor),
            "-" if others is None else str(others),
            outcome(row),
        ]
        table.add_row(*cells)
    table.caption = (
        "host s: launch to `ready` on the host clock. guest s: guest uptime at `ready`. "
        "host - guest s: before the guest's clock started (QEMU, firmware, boot loader, kernel "
        "decompression). ÷ anchor: host s / the anchor's host s, same run. other VMs: most "
        f"VMs already running at a launch. {ANCHOR_LABEL}: the {ANCHOR_PROFILE} profile's VM "
        "booted by libvirt's direct kernel boot (same kernel, initramfs and command line, no "
        f"firmware, no boot loader). {PAPER_BOOT}."
    )
    return table


def to_json(rows: list[Row], args: argparse.Namespace, loader: BootLoader) -> dict:
    anchor = rows[0]
    return {
        "benchmark": "boot_time",
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "loader": {"root": str(loader.root), "kernel_release": loader.kernel_release},
        "anchor": {"label": ANCHOR_LABEL, "profile": ANCHOR_PROFILE, "host_s": anchor.host()},
        "paper": PAPER_BOOT,
        "repeat": args.repeat,
        "budget_s": args.budget,
        "rows": [
            {
                "profile": r.label,
                "platform": r.platform,
                "via": r.via,
                "image_format": r.image_format,
                "skipped": r.skipped or None,
                "host_s_median": r.host(),
                "host_s_min": r.host("min"),
                "guest_s_median": r.guest(),
                "before_guest_clock_s_median": r.before_clock(),
                "ratio_to_anchor": (
                    r.host() / anchor.host() if r.host() is not None and anchor.host() else None
                ),
                "boots": [asdict(b) for b in r.boots],
            }
            for r in rows
        ],
    }


# --- main ----------------------------------------------------------------------------------


def profile_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown profile(s) {', '.join(unknown) or '(none given)'}; known: "
            f"{', '.join(PROFILES)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Boot each platform profile from its image format through the firmware and "
        "print its time to `ready` and its ratio to a direct kernel boot of the same "
        "kernel and initramfs (the kvm profile, no firmware), measured in the same "
        "run."
    )
    parser.add_argument(
        "--profiles",
        type=profile_list,
        default=list(PROFILES),
        metavar="A,B",
        help="profiles to boot (default: all; those QEMU cannot emulate are listed as skipped)",
    )
    add_boot_options(
        parser,
        repeat=1,
        repeat_help="boots per profile, and of the anchor (default 1); N > 1 reports the "
        "median and the minimum",
        budget_s=120.0,
    )
    return parse_boot_options(parser, argv)


def measure(args: argparse.Namespace, console: Console) -> tuple[list[Row], BootLoader]:
    with console.status("building (or finding) the boot loader"):
        loader = build()
    console.log(f"boot loader {loader.root}, kernel {loader.kernel_release}")
    run = Run(new_run_id(), RUN_ROOT).hold()
    try:
        subjects, skipped = make_subjects(args.profiles, run, args.accel)
        names = ", ".join(r.label for r in skipped) or "-"
        console.log(
            f"run {run.id}: {len(subjects) - 1} profile(s) and the anchor, "
            f"{args.repeat} round(s); skipped: {names}"
        )
        rows = run_rounds(subjects, loader, args.repeat, args.budget, console)
        return rows + skipped, loader
    finally:
        leftovers = destroy_leftovers(run)
        run.release()
        remove_if_empty(run.dir)
        if leftovers:
            console.print(f"[red]destroyed domains left running: {', '.join(leftovers)}[/red]")


def remove_if_empty(run_dir: Path) -> None:
    """The run's directory, once its instances have removed their own (only the lock is left)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".alive"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        rows, loader = measure(args, console)
    except (KeyboardInterrupt, *BENCH_ERRORS) as error:
        return report_failure(console, error)
    console.print(results_table(rows, args.repeat))
    for row in rows:
        if row.skipped:
            console.print(f"skipped {row.label}: {row.skipped}")
    if args.json:
        args.json.write_text(json.dumps(to_json(rows, args, loader), indent=2) + "\n")
        console.print(f"figures saved to {args.json}")
    return 0 if all(len(r.ready) == len(r.boots) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
