"""A libvirt target that boots a full-disk OS image instead of the boot loader.

The conventional baseline of bench/os_on_demand.py: the same host, profile, domain, names,
console log and clean-up as the lab's LibvirtTarget, only the disks differ. A copy of the
image gets a copy-on-write layer on top (libvirt relabels a backing file and may leave it so:
the original is never handed to it) as the profile's first disk, and libvirt's direct kernel
boot starts the image's own kernel and initrd with exactly its command line. It lives here,
not in lab/, because only the benchmark boots anything but the boot loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lab.build.bootloader import BootLoader
from lab.targets.base import LaunchRequest
from lab.targets.libvirt import LibvirtInstance, LibvirtTarget
from lab.targets.libvirt.disks import Media, copy_sparse, direct_boot, hand_to_qemu, overlay
from lab.targets.libvirt.domain import needs_passthrough


@dataclass(frozen=True)
class FullDisk:
    """A full-disk OS image and how it boots: ``disk`` in ``disk_format``, started by a
    direct kernel boot of ``kernel`` and ``initrd`` with exactly ``cmdline``."""

    disk: Path
    disk_format: str
    kernel: Path
    initrd: Path
    cmdline: str


class FullDiskTarget(LibvirtTarget):
    """``like``'s host, profile, run and settings, booting ``image`` in place of the boot
    loader that launch() is handed (the boot loader's own files are not read).

    The accelerator is the one ``like`` decided (``accel``, from ``like.accelerator()``): no
    probe is booted from a disk."""

    REFUSALS: ClassVar[Mapping[str, str]] = {
        "kernel_args": "{name}: a full disk boots its own kernel with exactly its command line",
    }

    def __init__(self, like: LibvirtTarget, image: FullDisk, accel: tuple[str, str]) -> None:
        super().__init__(
            like.name, like.profile, like.settings, like.run,
            default_uri=like.uri, accel=like.accel_setting, scratch_gb=like.scratch_gb,
        )  # fmt: skip
        self.image = image
        self.decided = accel

    def accelerator(self, image: BootLoader) -> tuple[str, str]:
        return self.decided

    def _media(self, instance: LibvirtInstance, request: LaunchRequest) -> Media:
        image, workdir = self.image, instance.workdir
        base = copy_sparse(image.disk, workdir / f"base-{image.disk.name}")
        top = overlay(base, image.disk_format, workdir / "disk.qcow2")
        direct = direct_boot(image.kernel, image.initrd, image.cmdline, workdir)
        passthrough = needs_passthrough(instance.profile, {image.disk_format, "qcow2"})
        hand_to_qemu([base, top], passthrough)
        return Media([(top, "qcow2", False)], passthrough, direct)
