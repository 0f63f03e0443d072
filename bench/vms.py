"""What the boot benchmarks share: signals that never leave a VM behind, the count of other
VMs on the host (they share its CPUs), and the last check that a run's domains are gone."""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import libvirt
from rich.console import Console

from lab.build.osrepo.keys import RepoError
from lab.build.releases import ReleaseError
from lab.build.rootfs import RootfsError
from lab.run import Run, new_run_id
from lab.targets.base import TargetError
from lab.targets.libvirt import LibvirtTarget
from lab.targets.libvirt.host import connect, undefine

LIBVIRT_URI = "qemu:///system"  # LibvirtTarget's default


def terminate(signum: int, _frame: object) -> None:
    """SIGTERM as an exception, so the context managers destroy what they hold."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a VM is being created (the launch has not yet handed back
    the instance that would destroy it); deliver them once it has."""
    caught: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda s, _f: caught.append(s))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in caught[:1]:
        signal.raise_signal(sig)


def other_vms(target: LibvirtTarget) -> int:
    """VMs already running on the host (another run's, anyone's): they share its CPUs."""
    return len(target.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))


def destroy_leftovers(run: Run) -> list[str]:
    """A last check that no domain of this run outlives it (the instances destroy their own)."""
    conn = connect(LIBVIRT_URI)
    try:
        prefix = run.resource_name("")  # ucvm-<run id>-
        mine = [d for d in conn.listAllDomains() if d.name().startswith(prefix)]
        for domain in mine:
            undefine(domain)
        return [d.name() for d in mine]
    finally:
        conn.close()


def add_boot_options(
    parser: argparse.ArgumentParser, *, repeat: int, repeat_help: str, budget_s: float
) -> None:
    """The options every boot benchmark takes: rounds, per-boot budget, accelerator, JSON."""
    parser.add_argument("--repeat", type=int, default=repeat, metavar="N", help=repeat_help)
    parser.add_argument(
        "--budget",
        type=float,
        default=budget_s,
        metavar="S",
        help=f"seconds one boot may take to reach `ready` (default {budget_s:g})",
    )
    parser.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="accelerator (default auto: the lab's probe decides)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save the figures here")


def parse_boot_options(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


# What a benchmark reports as a failure to measure (exit 2), not as a traceback.
BENCH_ERRORS: tuple[type[Exception], ...] = (
    TargetError, RepoError, ReleaseError, RootfsError, libvirt.libvirtError,
)  # fmt: skip


def report_failure(console: Console, error: BaseException) -> int:
    """The exit code for ``error`` (130 interrupted, 2 otherwise), and its one line."""
    if isinstance(error, KeyboardInterrupt):
        console.print("[red]interrupted[/red]")
        return 130
    if isinstance(error, libvirt.libvirtError):
        console.print(f"[red]libvirt: {error.get_error_message()}[/red]")
        return 2
    console.print(f"[red]{error}[/red]")
    return 2


@contextlib.contextmanager
def bench_run(root: Path, console: Console) -> Iterator[Run]:
    """A lab run of the benchmark's own; on the way out, no domain of it is left."""
    run = Run(new_run_id(), root).hold()
    try:
        yield run
    finally:
        leftovers = destroy_leftovers(run)
        run.release()
        if leftovers:
            console.print(f"[red]destroyed domains left running: {', '.join(leftovers)}[/red]")
