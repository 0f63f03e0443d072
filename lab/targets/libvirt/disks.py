"""An instance's own files: its disks, its kernel for a direct boot, their owners and modes.

libvirt relabels the files it hands QEMU and may leave them so, so an instance never gets an
original: the image is copied (sparse) into its work directory, with a copy-on-write layer
on top. Disks passed to QEMU directly (which libvirt does not label) are chowned to the
account QEMU runs as.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lab import proc
from lab.build.bootloader import KERNEL_CMDLINE, BootLoader
from lab.targets.base import TargetError
from lab.targets.libvirt.domain import needs_passthrough
from lab.targets.libvirt.host import qemu_user
from lab.targets.profiles import Profile

SCRATCH_MIN_GB = 0.25

Disk = tuple[Path, str, bool]
"""(path, QEMU format, is a CD-ROM), as lab.targets.libvirt.domain takes them."""


@dataclass(frozen=True)
class Media:
    """What an instance boots from, made in its work directory: its disks in boot order,
    whether they go to QEMU directly, and a direct kernel boot (kernel, initrd, command line)
    or None (the firmware boots the first disk)."""

    disks: list[Disk]
    passthrough: bool
    direct_boot: tuple[Path, Path, str] | None = None


def boot_loader_media(
    image: BootLoader,
    profile: Profile,
    fmt: str,
    workdir: Path,
    *,
    scratch_gb: float,
    kernel_args: str | None = None,
) -> Media:
    """The instance's own disks: a copy of the image plus a copy-on-write layer on top
    that the platform has grown by scratch_gb (clouds hand out disks larger than the image);
    or, booting from ISO, the ISO and a blank disk for scratch. With ``kernel_args``, a direct
    kernel boot of the image's kernel with those arguments after the boot loader's own."""
    source, qemu_format = image.disk_for_qemu(fmt)
    base = copy_sparse(source, workdir / f"base-{source.name}")
    scratch_bytes = int(max(scratch_gb, SCRATCH_MIN_GB) * (1 << 30))
    if fmt == "iso":
        blank = workdir / f"scratch.{profile.scratch_format}"
        qemu_img("create", "-q", "-f", profile.scratch_format, str(blank), str(scratch_bytes))
        disks = [(base, "raw", True), (blank, profile.scratch_format, False)]
    else:
        size = base_virtual_size(base, qemu_format) + scratch_bytes
        disks = [(overlay(base, qemu_format, workdir / "disk.qcow2", size), "qcow2", False)]
    passthrough = needs_passthrough(profile, {qemu_format} | {f for _, f, _ in disks})
    hand_to_qemu([base, *(p for p, _, _ in disks)], passthrough)
    direct = None
    if kernel_args is not None:
        cmdline = f"{KERNEL_CMDLINE} {kernel_args}".strip()
        direct = direct_boot(image.vmlinuz, image.initrd, cmdline, workdir)
    return Media(disks, passthrough, direct)


def copy_sparse(source: Path, dest: Path) -> Path:
    proc.run("cp", "--sparse=always", source, dest, error=TargetError)
    return dest


def overlay(base: Path, base_format: str, top: Path, size: int | None = None) -> Path:
    """A qcow2 layer ``top`` over ``base`` (``size`` bytes; default: the base's size)."""
    grown = [str(size)] if size is not None else []
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(top), *grown)
    return top


def direct_boot(kernel: Path, initrd: Path, cmdline: str, workdir: Path) -> tuple[Path, Path, str]:
    """Copies of ``kernel`` and ``initrd`` in the work directory (libvirt relabels these too)
    and the command line: libvirt's direct kernel boot."""
    copies = workdir / "vmlinuz", workdir / "initrd.img"
    shutil.copy2(kernel, copies[0])
    shutil.copy2(initrd, copies[1])
    return copies[0], copies[1], cmdline


def hand_to_qemu(paths: Iterable[Path], passthrough: bool) -> None:
    """Disks passed to QEMU directly go to the account QEMU runs as: libvirt labels only the
    disks it manages."""
    owner = qemu_user()
    if passthrough and owner:
        for path in paths:
            os.chown(path, *owner)


def make_private(workdir: Path) -> None:
    """Files of an instance 0600, its directories 0711: libvirt hands the disks, kernel and
    media it manages to libvirt-qemu (and back), the passthrough disks are chowned to it, and
    libvirt or virtlogd open the console log and the channel socket as root."""
    for path in workdir.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(0o711 if path.is_dir() else 0o600)


def qemu_img(*args: str) -> None:
    proc.run("qemu-img", *args, error=TargetError)


def base_virtual_size(path: Path, fmt: str) -> int:
    info = proc.run("qemu-img", "info", "--output=json", "-f", fmt, path, error=TargetError)
    return int(json.loads(info.stdout)["virtual-size"])
