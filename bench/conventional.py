"""The benchmarks' baseline: a release of releases.yaml as a conventional full-disk image.

bench/os_on_demand.py boots the μCernVM-style image (a boot loader that fetches the OS from the
repository) against this: the same release, plus Debian's kernel (the package the boot loader
uses) and initramfs-tools, as an ext4 file system in a compressed qcow2, with the kernel and
Debian's own initrd beside it for libvirt's direct kernel boot. Nothing in the lab boots it, so
it lives here, with the benchmark, and builds on lab.build.rootfs's steps (solve, install,
customise, clamp): only the disk at the end differs. Cached in the ArtifactStore like a release.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import proc
from lab.artifacts import ArtifactStore, file_digest
from lab.build import kernel as kernel_pkg
from lab.build import os_files
from lab.build.releases import Release
from lab.build.rootfs import (
    AptLists,
    RootfsError,
    apt_lists,
    build_info,
    check_installed,
    clamp_mtimes,
    customise,
    disk_usage,
    install,
    release_inputs,
    solve_list,
    source_date_epoch,
    timed,
    write_closed_list,
)
from lab.packages import closed_list, solve

CONVENTIONAL_CMDLINE = "root=/dev/vda rw console=ttyS0,115200"
# what the conventional image adds to the release besides the kernel: Debian's initramfs
# generator, with what a Debian install has beside it (initramfs-tools-core recommends zstd,
# its default compressor, and busybox), and e2fsprogs for the ext4 root (Priority: required)
CONVENTIONAL_EXTRAS = ("initramfs-tools", "zstd", "busybox", "e2fsprogs")
MIB = 1 << 20


@dataclass(frozen=True)
class ConventionalImage:
    qcow2: Path
    kernel: Path
    initrd: Path
    cmdline: str
    tag: str
    root: Path  # the unpacked tree the disk was made from
    closed_list: Path
    record: dict[str, str] = field(hash=False)
    info: dict[str, Any] = field(hash=False)


def conventional_image(release: Release, store: ArtifactStore | None = None) -> ConventionalImage:
    """The same release as a conventional full disk: + Debian's kernel (the package the boot
    loader uses) + initramfs-tools (see CONVENTIONAL_EXTRAS), an ext4 file system in a
    compressed qcow2, and the kernel and Debian's own initrd for a direct kernel boot."""
    store = store or ArtifactStore()
    lists = apt_lists(store)
    epoch = source_date_epoch(lists)
    package, version = kernel_pkg.resolve_package()
    kernel_release = package.removeprefix("linux-image-")
    extra = (solve.Wanted(package, version), *map(solve.Wanted, CONVENTIONAL_EXTRAS))
    inputs = {
        **release_inputs(release, lists, epoch, store),
        "image": "conventional",
        "kernel": [package, version],
        "cmdline": CONVENTIONAL_CMDLINE,
        "image_tools": proc.package_versions("e2fsprogs", "qemu-utils"),
        "image_code": file_digest(Path(__file__)),
    }

    def build(work: Path) -> None:
        build_conventional_into(work, release, lists, store, epoch, extra, kernel_release)

    return conventional_artifact(store.get("os-conventional", inputs, build))


def conventional_artifact(directory: Path) -> ConventionalImage:
    info = json.loads((directory / "build.json").read_text())
    return ConventionalImage(
        qcow2=directory / "disk.qcow2",
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        cmdline=info["cmdline"],
        tag=info["tag"],
        root=directory / "root",
        closed_list=directory / "closed-list.txt",
        record=os_files.read_record(directory / "root"),
        info=info,
    )


def build_conventional_into(
    work: Path,
    release: Release,
    lists: AptLists,
    store: ArtifactStore,
    epoch: int,
    extra: Sequence[solve.Wanted],
    kernel_release: str,
) -> None:
    timings: dict[str, float] = {}
    with timed(timings, "solve"):
        solved = solve_list(release.shopping_list, lists, store, extra)
        closed = write_closed_list(solved, lists, release.shopping_list, work)
    entries = closed_list.entries(solved.packages)
    # Debian's initrd, made inside the root once everything is configured (mmdebstrap has
    # /proc, /sys and /dev mounted for its hooks)
    initramfs = (
        f'rm -f "$1/boot/initrd.img-{kernel_release}" && '
        f'chroot "$1" update-initramfs -c -k {kernel_release}'
    )
    root = work / "root"
    with timed(timings, "mmdebstrap"):
        fetched = install(entries, lists, root, store, work / "build.log", epoch=epoch,
                          customize=[initramfs])  # fmt: skip
    with timed(timings, "customise"):
        check_installed(entries, root)
        customise(root, release, closed, store, epoch)
        clamp_mtimes(root, epoch)
    with timed(timings, "disk"):
        boot_files(root, kernel_release, work)
        disk = make_disk(root, work)
    info = build_info(release, solved, fetched, root, epoch)
    info.update(disk, cmdline=CONVENTIONAL_CMDLINE, kernel_release=kernel_release,
                timings_s=timings)  # fmt: skip
    (work / "build.json").write_text(json.dumps(info, indent=2) + "\n")


def boot_files(root: Path, kernel_release: str, out: Path) -> None:
    for source, name in ((f"vmlinuz-{kernel_release}", "vmlinuz"),
                         (f"initrd.img-{kernel_release}", "initrd.img")):  # fmt: skip
        if not (root / "boot" / source).is_file():
            raise RootfsError(f"{root}/boot/{source} is missing after the install")
        shutil.copyfile(root / "boot" / source, out / name)
        (out / name).chmod(0o644)  # QEMU runs as libvirt-qemu


def make_disk(root: Path, out: Path) -> dict[str, int]:
    """ext4 of the root (its content + a fifth + 128 MiB), as a compressed qcow2."""
    used = disk_usage(root)
    size = (used + used // 5 + 128 * MIB + MIB - 1) // MIB * MIB
    raw = out / "disk.raw"
    with raw.open("wb") as stream:
        stream.truncate(size)
    inodes = sum(len(dirs) + len(files) for _, dirs, files in os.walk(root)) * 2 + 8192
    mkfs = ("mkfs.ext4", "-q", "-F", "-L", "ucvm-root", "-N", str(inodes), "-d", root, raw)
    proc.run(*mkfs, error=RootfsError)
    proc.run("qemu-img", "convert", "-c", "-O", "qcow2", raw, out / "disk.qcow2", error=RootfsError)
    raw.unlink()
    return {"disk_bytes": size, "qcow2_bytes": (out / "disk.qcow2").stat().st_size}
