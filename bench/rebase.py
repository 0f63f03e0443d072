"""Rebase: what an update costs the boot that applies it, against a plain reboot.

Three subjects, interleaved round by round on the kvm profile (same QEMU, same memory), each a
fresh instance that boots once, then reboots; the figures are those of the reboot:

- plain: boot newest, reboot: the pin and the cache are kept, nothing changes;
- rebase: boot previous, make a local change, `ucvm-update --apply --to newest`, reboot: the
  trial pin, the old snapshot mounted from its cache on /dev/nbd1, the three-way rebase of the
  writable layer, the new snapshot's first boot;
- rebase+kexec: boot newest, `ucvm-update --apply --to devel` (2.0-dev wants loader 0.2),
  reboot: the same, plus phase 1 kexec'ing into the staged loader.

Per reboot: host seconds from the reboot request until the lab has seen `ready` (the same clock
for every subject), and the bytes the repository server sent
the instance for that boot (its access log, by the instance's X-Ucvm-Instance header). The
ratios are against `plain`, measured in the same run. The boot loader image budget (the
paper's 12 MB, compressed) is printed per format. Times are never judged: these machines are
noisy and run QEMU without KVM.

    .venv/bin/python bench/rebase.py [--repeat N] [--budget S] [--accel auto|kvm|tcg]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from vms import BENCH_ERRORS, bench_run, report_failure, signals_deferred, terminate

from lab.build import bootloader, releases, rootfs
from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader, gzip_size
from lab.build.osrepo.repository import Repository
from lab.observe import observe_boot
from lab.services.repo import RepoServer
from lab.targets.base import Instance, TargetError
from lab.targets.libvirt import LibvirtTarget
from lab.targets.profiles import PROFILES

RUN_ROOT = Path("/var/tmp/ucvm-lab")
PROFILE = "kvm"
MB = 10**6
BUDGET_LOADER_GZIP_BYTES = 12 * MB  # DESIGN.md: the compressed boot loader image <= 12 MB
PLAIN, REBASE, KEXEC = "plain", "rebase", "rebase+kexec"


@dataclass(frozen=True)
class Subject:
    name: str
    boots: str  # the version the first boot asks for
    update_to: str | None  # what `ucvm-update --apply --to` stages, or None: a plain reboot


SUBJECTS = (
    Subject(PLAIN, "newest", None),
    Subject(REBASE, "previous", "newest"),
    Subject(KEXEC, "newest", "devel"),
)


@dataclass
class Reboot:
    subject: str
    round: int
    ok: bool
    host_s: float | None = None
    server_bytes: int | None = None
    os: str | None = None
    note: str = ""


def publish_everything(repository: Repository, console: Console) -> BootLoader:
    """Every loader version, then every release of releases.yaml with the loader it wants."""
    with console.status("building (or finding) the boot loaders and the releases"):
        loaders = {v: bootloader.build(loader_version=v) for v in bootloader.LOADER_VERSIONS}
        release_set = releases.load_release_set()
        built = [(release, rootfs.build_release(release)) for release in release_set.releases]
    repository.init("ucvm-bench", default_branch=release_set.default.branch)
    for version, loader in loaders.items():
        repository.publish_loader(version, loader.vmlinuz, loader.initrd)
    for release, artifact in built:
        repository.publish(artifact.squashfs, release.tag, release.branch, loader=release.loader)
    return loaders[bootloader.IMAGE_LOADER]


def run_in(instance: Instance, command: str) -> str:
    result = instance.run(command, timeout=180)
    if not result.ok:
        raise TargetError(f"`{command}` exited {result.exit_code}: {result.output.strip()}")
    return result.output


def reboot_once(
    subject: Subject, round_no: int, launch: Callable[[Subject], Instance],
    server: RepoServer, budget_s: float,
) -> Reboot:  # fmt: skip
    with contextlib.ExitStack() as stack:
        try:
            with signals_deferred():
                instance = stack.enter_context(launch(subject))
            first = observe_boot(instance, budget_s)
            if not first.ready:
                return Reboot(subject.name, round_no, False, note=f"first boot: {first.summary()}")
            if subject.update_to:
                run_in(instance, "echo local-edit >>/etc/ucvm-fixture/stable.conf")
                run_in(instance, f"ucvm-update --apply --to {subject.update_to}")
            sent_before = server.bytes_sent(instance.uuid).body_bytes
            started = time.monotonic()
            instance.reboot()
            second = observe_boot(instance, budget_s)
            if not second.ready:
                return Reboot(subject.name, round_no, False, note=second.summary())
            host_s = time.monotonic() - started  # the same clock for every subject
            sent = server.bytes_sent(instance.uuid).body_bytes - sent_before
            return Reboot(subject.name, round_no, True, host_s, sent, second.os_version)
        except TargetError as error:
            return Reboot(subject.name, round_no, False, note=str(error))


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def figures(
    reboots: list[Reboot], subject: str, pick: Callable[[Reboot], float | None]
) -> float | None:
    return median(
        [v for r in reboots if r.subject == subject and r.ok and (v := pick(r)) is not None]
    )


def ratio(mine: float | None, base: float | None) -> str:
    return f"{mine / base:.2f}" if mine is not None and base else "-"


def results_table(reboots: list[Reboot]) -> Table:
    table = Table(title="The reboot that applies an update, against a plain reboot (medians)")
    for column in ("subject", "ready", "host s to ready", "× plain", "server bytes", "× plain"):
        table.add_column(column, justify="left" if column == "subject" else "right")
    base_s = figures(reboots, PLAIN, lambda r: r.host_s)
    base_b = figures(reboots, PLAIN, lambda r: r.server_bytes)
    for subject in SUBJECTS:
        mine = [r for r in reboots if r.subject == subject.name]
        host_s = figures(reboots, subject.name, lambda r: r.host_s)
        sent = figures(reboots, subject.name, lambda r: r.server_bytes)
        table.add_row(
            subject.name, f"{sum(r.ok for r in mine)}/{len(mine)}",
            f"{host_s:.1f}" if host_s is not None else "-", ratio(host_s, base_s),
            f"{sent:,.0f}" if sent is not None else "-", ratio(sent, base_b),
        )  # fmt: skip
    return table


def image_budget_table(loader: BootLoader) -> Table:
    table = Table(
        title=f"Boot loader image, gzip, against the {BUDGET_LOADER_GZIP_BYTES // MB} MB budget"
    )
    for column in ("format", "gzip bytes", "of budget", "within"):
        table.add_column(column, justify="left" if column == "format" else "right")
    for image_format in sorted(loader.manifest["images"]):
        size = gzip_size(loader.image(image_format))
        within = "yes" if size <= BUDGET_LOADER_GZIP_BYTES else "NO"
        table.add_row(image_format, f"{size:,}", f"{size / BUDGET_LOADER_GZIP_BYTES:.3f}", within)
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three subjects")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds a boot may take")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat: expected a whole number of at least 1")
    return args


def measure(args: argparse.Namespace, console: Console) -> tuple[list[Reboot], BootLoader]:
    with bench_run(RUN_ROOT, console) as run:
        repository = Repository(run.dir / "osrepo")
        loader = publish_everything(repository, console)
        target = LibvirtTarget(f"bench-{PROFILE}", PROFILES[PROFILE], {}, run, accel=args.accel)
        ok, why = target.available()
        if not ok:
            raise TargetError(f"the {PROFILE} profile cannot run here: {why}")
        reboots: list[Reboot] = []
        with RepoServer(repository.root, run.dir / "nginx") as server:

            def launch(subject: Subject) -> Instance:
                return target.launch(
                    loader, boot_args=[f"ucvm.version={subject.boots}"],
                    host_services={GUEST_REPO_ADDRESS: server.port},
                )  # fmt: skip

            for round_no in range(1, args.repeat + 1):
                for subject in SUBJECTS:
                    with console.status(f"round {round_no}/{args.repeat}: {subject.name}"):
                        reboot = reboot_once(subject, round_no, launch, server, args.budget)
                    reboots.append(reboot)
                    console.log(f"{subject.name} round {round_no}: "
                                + (f"ready in {reboot.host_s:.1f} s, {reboot.server_bytes:,} B"
                                   if reboot.ok else f"[red]{reboot.note}[/red]"))  # fmt: skip
        return reboots, loader


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        reboots, loader = measure(args, console)
    except (KeyboardInterrupt, *BENCH_ERRORS) as error:
        return report_failure(console, error)
    console.print(image_budget_table(loader))
    console.print(results_table(reboots))
    return 0 if all(r.ok for r in reboots) else 1


if __name__ == "__main__":
    sys.exit(main())
