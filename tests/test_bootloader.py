"""Checks of the built boot loader (lab.build.bootloader): every artifact is what it claims to
be, judged by real tools (qemu-img, sfdisk, xorriso, blkid, cpio), plus unit tests of the
module closure and of the artifact store. No VM is booted here.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import re
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from lab import cli
from lab.artifacts import ArtifactStore, file_digest
from lab.build import bootloader
from lab.build.bootloader import (
    IMAGE_FILES,
    IMAGE_FORMATS,
    PLATFORM_DRIVERS,
    BootLoader,
    BuildError,
    module_closure,
    read_module_deps,
)

OVF = "{http://schemas.dmtf.org/ovf/envelope/1}"
MBR_SIGNATURE = b"\x55\xaa"
GiB = 1 << 30
MAX_MODULES = 120  # the paper: about 100 modules instead of 2,000
# Converted formats that must hold the raw disk byte for byte, with QEMU's name for each.
CONVERTED = {"qcow2": "qcow2", "vdi": "vdi", "vhd": "vpc", "vhdx": "vhdx"}


def tool(*args: str | Path) -> str:
    """stdout of a command that must succeed."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args} failed: {result.stderr}"
    return result.stdout


def qemu_info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    forced = ["-f", fmt] if fmt else []
    return json.loads(tool("qemu-img", "info", "--output=json", *forced, path))


def read_at(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as stream:
        stream.seek(offset)
        return stream.read(size)


@pytest.fixture(scope="module")
def loader() -> BootLoader:
    return bootloader.build()


@pytest.fixture(scope="module")
def ova_dir(loader: BootLoader, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The OVA's members, unpacked from the OVA itself (not the builder's own copy)."""
    out = tmp_path_factory.mktemp("ova")
    with tarfile.open(loader.image("ova")) as tar:
        tar.extractall(out, filter="data")
    return out


@pytest.fixture(scope="module")
def initrd_files(loader: BootLoader) -> set[str]:
    listing = subprocess.run(
        f"xz -dc '{loader.initrd}' | cpio -t --quiet",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(listing.stdout.splitlines())


# --- the manifest ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_manifest_matches_the_image_file(loader: BootLoader, fmt: str) -> None:
    entry = loader.manifest["images"][fmt]
    path = loader.image(fmt)
    assert entry["file"] == path.name == IMAGE_FILES[fmt]
    assert entry["bytes"] == path.stat().st_size
    assert entry["sha256"] == file_digest(path)
    assert entry["gzip_bytes"] == len(gzip.compress(path.read_bytes(), compresslevel=6))


def test_manifest_lists_exactly_the_image_formats(loader: BootLoader) -> None:
    assert set(loader.manifest["images"]) == set(IMAGE_FORMATS)


def test_manifest_kernel_and_parts(loader: BootLoader) -> None:
    manifest = loader.manifest
    assert manifest["kernel"]["release"] == loader.kernel_release
    assert manifest["kernel_cmdline"] == bootloader.KERNEL_CMDLINE
    assert manifest["vmlinuz_bytes"] == loader.vmlinuz.stat().st_size
    assert manifest["initrd_bytes"] == loader.initrd.stat().st_size


def test_modules_cover_every_platform_driver(loader: BootLoader) -> None:
    names = set(loader.manifest["modules"]["names"])
    wanted = {d.replace("-", "_") for drivers in PLATFORM_DRIVERS.values() for d in drivers}
    assert wanted - names == set()


def test_modules_stay_few(loader: BootLoader) -> None:
    modules = loader.manifest["modules"]
    assert modules["count"] == len(modules["names"]) <= MAX_MODULES


def test_initramfs_carries_exactly_the_manifest_modules(
    loader: BootLoader, initrd_files: set[str]
) -> None:
    carried = sorted(bootloader.module_name(f) for f in initrd_files if f.endswith(".ko"))
    assert carried == loader.manifest["modules"]["names"]


# --- the initramfs ---------------------------------------------------------------------------


def test_initramfs_layout(loader: BootLoader, initrd_files: set[str]) -> None:
    modules = f"lib/modules/{loader.kernel_release}"
    for needed in (
        "init",
        "bin/busybox",
        "etc/ucvm/functions",
        "etc/ucvm/udhcpc.script",
        "dev/console",
        f"{modules}/modules.dep",
        f"{modules}/modules.alias",
    ):
        assert needed in initrd_files, needed


def test_initramfs_modules_dep_is_closed(loader: BootLoader, initrd_files: set[str]) -> None:
    """Every module the initramfs's modules.dep names (and its dependencies) is in the archive."""
    dep_file = f"lib/modules/{loader.kernel_release}/modules.dep"
    text = subprocess.run(
        f"xz -dc '{loader.initrd}' | cpio -i --to-stdout --quiet '{dep_file}'",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    named = {path for line in text.splitlines() for path in line.replace(":", " ").split()}
    assert len(named) == loader.manifest["modules"]["count"]
    prefix = f"lib/modules/{loader.kernel_release}/"
    assert {prefix + path for path in named} <= initrd_files


# --- the other loader versions (kernel and initramfs only) ----------------------------------


def cpio_entries(initrd: Path) -> dict[str, tuple[int, int, int, int, int, bytes]]:
    """name -> (mode, uid, gid, rdev major, rdev minor, content) of an xz'd newc cpio; the
    mtimes are those of the staging tree, so they are left out."""
    data, offset = lzma.decompress(initrd.read_bytes()), 0
    entries: dict[str, tuple[int, int, int, int, int, bytes]] = {}
    while True:
        header = data[offset : offset + 110]
        assert header[:6] == b"070701", f"no newc header at {offset}"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, size, rdev_major, rdev_minor, name_size = (
            fields[i] for i in (1, 2, 3, 6, 9, 10, 11)
        )
        name = data[offset + 110 : offset + 110 + name_size - 1].decode()
        start = -(-(offset + 110 + name_size) // 4) * 4
        offset = -(-(start + size) // 4) * 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, uid, gid, rdev_major, rdev_minor, data[start : start + size])


@pytest.fixture(scope="module")
def other_loaders(loader: BootLoader) -> dict[str, BootLoader]:
    """Every loader version but the image's, built as ``ucvm-lab build`` builds them."""
    others = [v for v in bootloader.LOADER_VERSIONS if v != bootloader.IMAGE_LOADER]
    assert others, "LOADER_VERSIONS has one version: the kexec path has nothing to load"
    return {version: bootloader.build(loader_version=version) for version in others}


def test_the_image_loader_is_one_of_the_versions(loader: BootLoader) -> None:
    assert loader.version == bootloader.IMAGE_LOADER in bootloader.LOADER_VERSIONS
    assert loader.manifest["loader_version"] == bootloader.IMAGE_LOADER
    assert loader.manifest["initrd_sha256"] == file_digest(loader.initrd)


def test_another_loader_version_is_a_kernel_and_an_initramfs_only(
    loader: BootLoader, other_loaders: dict[str, BootLoader]
) -> None:
    for version, other in other_loaders.items():
        assert other.version == other.manifest["loader_version"] == version
        assert other.root != loader.root  # cached under its own input hash
        assert other.manifest["images"] == {}
        assert sorted(p.name for p in other.root.iterdir()) == [
            "initrd.img", "inputs.json", "manifest.json", "vmlinuz",
        ]  # fmt: skip
        assert other.manifest["vmlinuz_sha256"] == file_digest(other.vmlinuz)
        assert other.manifest["initrd_sha256"] == file_digest(other.initrd)
        with pytest.raises(BuildError, match=f"loader {version} has no disk images"):
            other.image("raw")
        assert bootloader.build(loader_version=version).root == other.root  # built once


def test_another_loader_version_differs_only_in_its_version_file(
    loader: BootLoader, other_loaders: dict[str, BootLoader]
) -> None:
    image_entries = cpio_entries(loader.initrd)
    assert image_entries["etc/ucvm/version"][-1] == f"{bootloader.IMAGE_LOADER}\n".encode()
    for version, other in other_loaders.items():
        assert other.vmlinuz.read_bytes() == loader.vmlinuz.read_bytes()
        entries = cpio_entries(other.initrd)
        assert entries.keys() == image_entries.keys()
        differ = sorted(name for name in entries if entries[name] != image_entries[name])
        assert differ == ["etc/ucvm/version"]
        assert entries["etc/ucvm/version"][-1] == f"{version}\n".encode()


def test_ucvm_lab_build_shows_every_loader_version(
    loader: BootLoader,
    other_loaders: dict[str, BootLoader],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.build_loader_versions(loader)

    rows = {
        cells[1].strip(): line
        for line in capsys.readouterr().out.splitlines()
        if len(cells := line.split("│")) > 2
    }
    assert sorted(rows) == sorted(bootloader.LOADER_VERSIONS)
    for version, built in {bootloader.IMAGE_LOADER: loader, **other_loaders}.items():
        row = rows[version]
        assert f"{built.manifest['initrd_bytes']:,}" in row
        assert built.manifest["initrd_sha256"][:16] in row
        assert (f"{len(IMAGE_FORMATS)} formats" in row) is (version == bootloader.IMAGE_LOADER)


def test_an_unknown_loader_version_is_refused() -> None:
    with pytest.raises(BuildError) as error:
        bootloader.build(loader_version="9.9")
    known = ", ".join(bootloader.LOADER_VERSIONS)
    assert str(error.value) == f"unknown loader version '9.9'; known: {known}"


# --- raw disk --------------------------------------------------------------------------------


def test_raw_disk_mbr(loader: BootLoader) -> None:
    raw = loader.image("raw")
    sector = read_at(raw, 0, 512)
    assert sector[510:] == MBR_SIGNATURE
    assert sector[:440] == bootloader.SYSLINUX_MBR.read_bytes()[:440]


def test_raw_disk_has_one_bootable_fat_partition(loader: BootLoader) -> None:
    raw = loader.image("raw")
    table = json.loads(tool("sfdisk", "--json", raw))["partitiontable"]
    assert table["label"] == "dos"
    [part] = table["partitions"]
    assert part["bootable"] is True
    assert int(part["type"], 16) in {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}  # the FAT types
    assert (part["start"] + part["size"]) * 512 <= raw.stat().st_size
    probe = tool("blkid", "-p", "-o", "export", "-O", str(part["start"] * 512), raw)
    found = dict(line.split("=", 1) for line in probe.splitlines())
    assert (found["TYPE"], found["LABEL"]) == ("vfat", "UCVM_BOOT")


def test_raw_disk_fat_holds_syslinux_kernel_and_initrd(loader: BootLoader) -> None:
    listing = tool("mdir", "-a", "-b", "-i", f"{loader.image('raw')}@@1M", "::/")
    files = {line.removeprefix("::/").lower() for line in listing.split()}
    assert {"ldlinux.sys", "ldlinux.c32", "syslinux.cfg", "vmlinuz", "initrd.img"} <= files


# --- ISO -------------------------------------------------------------------------------------


def test_iso_volume_id_and_hybrid_mbr(loader: BootLoader) -> None:
    iso = loader.image("iso")
    assert read_at(iso, 32808, 32).rstrip(b" ") == b"UCVM_BOOT"
    assert read_at(iso, 510, 2) == MBR_SIGNATURE
    info = subprocess.run(
        ["xorriso", "-indev", str(iso), "-pvd_info"], capture_output=True, text=True, check=True
    )
    assert re.search(r"^Volume Id\s*:\s*UCVM_BOOT\s*$", info.stdout, re.MULTILINE)
    assert "El Torito" in info.stdout + info.stderr


# --- converted formats -----------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "qemu_format"), CONVERTED.items())
def test_converted_format(loader: BootLoader, fmt: str, qemu_format: str) -> None:
    path = loader.image(fmt)
    forced = "vpc" if fmt == "vhd" else None  # autodetection takes a fixed VHD for raw
    info = qemu_info(path, forced)
    assert info["format"] == qemu_format
    assert info["virtual-size"] == loader.image("raw").stat().st_size
    assert loader.disk_for_qemu(fmt) == (path, qemu_format)


@pytest.mark.parametrize(("fmt", "qemu_format"), CONVERTED.items())
def test_converted_format_holds_the_raw_disk(
    loader: BootLoader, fmt: str, qemu_format: str
) -> None:
    out = tool(
        "qemu-img",
        "compare",
        "-f",
        "raw",
        "-F",
        qemu_format,
        loader.image("raw"),
        loader.image(fmt),
    )
    assert "Images are identical" in out


def test_vhd_is_fixed(loader: BootLoader) -> None:
    """A fixed VHD is the raw disk followed by a 512-byte footer whose disk type is 2."""
    vhd, raw = loader.image("vhd"), loader.image("raw")
    assert vhd.stat().st_size == raw.stat().st_size + 512
    footer = read_at(vhd, raw.stat().st_size, 512)
    assert footer[:8] == b"conectix"
    assert int.from_bytes(footer[60:64], "big") == 2


# --- OVA -------------------------------------------------------------------------------------


def test_ova_member_order(loader: BootLoader) -> None:
    with tarfile.open(loader.image("ova")) as tar:
        assert tar.getnames() == ["ucvm.ovf", "ucvm.mf", "ucvm-disk1.vmdk"]


def test_ova_manifest_matches_members(ova_dir: Path) -> None:
    lines = (ova_dir / "ucvm.mf").read_text().splitlines()
    matches = [re.fullmatch(r"SHA256\((.+)\)= ([0-9a-f]{64})", line) for line in lines]
    assert all(matches), lines
    digests = {m[1]: m[2] for m in matches if m}
    assert set(digests) == {"ucvm.ovf", "ucvm-disk1.vmdk"}
    for name, digest in digests.items():
        assert hashlib.sha256((ova_dir / name).read_bytes()).hexdigest() == digest, name


def test_ova_descriptor_references_the_vmdk(ova_dir: Path, loader: BootLoader) -> None:
    root = ET.parse(ova_dir / "ucvm.ovf").getroot()
    [file] = root.iter(f"{OVF}File")
    assert file.get(f"{OVF}href") == "ucvm-disk1.vmdk"
    assert int(file.get(f"{OVF}size", "-1")) == (ova_dir / "ucvm-disk1.vmdk").stat().st_size
    [disk] = root.iter(f"{OVF}Disk")
    assert disk.get(f"{OVF}fileRef") == file.get(f"{OVF}id")
    assert int(disk.get(f"{OVF}capacity", "-1")) == loader.image("raw").stat().st_size


def test_ova_vmdk_is_stream_optimized_and_holds_the_raw_disk(
    ova_dir: Path, loader: BootLoader
) -> None:
    vmdk = ova_dir / "ucvm-disk1.vmdk"
    info = qemu_info(vmdk)
    assert info["format"] == "vmdk"
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    out = tool("qemu-img", "compare", "-f", "raw", "-F", "vmdk", loader.image("raw"), vmdk)
    assert "Images are identical" in out
    unpacked, qemu_format = loader.disk_for_qemu("ova")
    assert qemu_format == "vmdk"
    assert unpacked.read_bytes() == vmdk.read_bytes()


# --- GCE tarball -----------------------------------------------------------------------------


def test_gce_tarball_holds_disk_raw(loader: BootLoader) -> None:
    with tarfile.open(loader.image("gce-tar"), "r:gz") as tar:
        [member] = tar.getmembers()
        assert member.name == "disk.raw"
        assert member.isfile()
        assert member.size > 0 and member.size % GiB == 0
        stream = tar.extractfile(member)
        assert stream is not None
        first_sector = stream.read(512)
    assert first_sector == read_at(loader.image("raw"), 0, 512)


def test_gce_disk_holds_the_raw_disk(loader: BootLoader) -> None:
    disk, qemu_format = loader.disk_for_qemu("gce-tar")
    assert disk.stat().st_size % GiB == 0
    # Not strict (-s): the bytes past the raw disk must read as zeros.
    out = tool("qemu-img", "compare", "-f", "raw", "-F", qemu_format, loader.image("raw"), disk)
    assert "Images are identical" in out


# --- module_closure and read_module_deps -----------------------------------------------------

DEPS: dict[str, tuple[str, list[str]]] = {
    "virtio_net": (
        "kernel/drivers/net/virtio_net.ko",
        ["kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko"],
    ),
    "net_failover": ("kernel/drivers/net/net_failover.ko", ["kernel/net/core/failover.ko"]),
    "failover": ("kernel/net/core/failover.ko", []),
    "xen_blkfront": ("kernel/drivers/block/xen-blkfront.ko", []),
    "ext4": ("kernel/fs/ext4/ext4.ko", ["kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko"]),
    "jbd2": ("kernel/fs/jbd2/jbd2.ko", []),
    "mbcache": ("kernel/fs/mbcache.ko", []),
}


@pytest.mark.parametrize(
    ("wanted", "closure"),
    [
        (set(), []),
        ({"failover"}, ["kernel/net/core/failover.ko"]),
        (
            {"virtio_net"},
            [
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/net/core/failover.ko",
            ],
        ),
        (
            {"xen_blkfront", "ext4"},
            [
                "kernel/drivers/block/xen-blkfront.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
            ],
        ),
    ],
)
def test_module_closure(wanted: set[str], closure: list[str]) -> None:
    assert module_closure(wanted, DEPS) == closure


@pytest.mark.parametrize("wanted", [{"e1000"}, {"ext4", "e1000"}, {"xen-blkfront"}])
def test_module_closure_names_a_missing_module(wanted: set[str]) -> None:
    missing = next(iter(wanted - set(DEPS)))
    with pytest.raises(BuildError, match=re.escape(missing)):
        module_closure(wanted, DEPS)


def test_read_module_deps_normalises_names(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/drivers/block/xen-blkfront.ko:\n"
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko "
        "kernel/net/core/failover.ko\n"
    )
    deps = read_module_deps(tmp_path)
    assert deps == {
        "xen_blkfront": ("kernel/drivers/block/xen-blkfront.ko", []),
        "virtio_net": (
            "kernel/drivers/net/virtio_net.ko",
            ["kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko"],
        ),
    }


# --- ArtifactStore ---------------------------------------------------------------------------


class CountingBuild:
    """A builder that writes one file and counts its calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, out: Path) -> None:
        self.calls += 1
        (out / "disk.img").write_text(f"build {self.calls}")
        if self.fail:
            raise RuntimeError("the builder broke")


def finished_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def test_store_builds_once(tmp_path: Path) -> None:
    build = CountingBuild()
    first = ArtifactStore(tmp_path).get("disk", {"size": 1}, build)
    again = ArtifactStore(tmp_path).get("disk", {"size": 1}, build)  # a new session, same root
    assert first == again
    assert build.calls == 1
    assert (first / "disk.img").read_text() == "build 1"
    assert json.loads((first / "inputs.json").read_text()) == {"size": 1}
    assert finished_dirs(tmp_path) == [first.name]
    assert first.stat().st_mode & 0o777 == 0o755


def test_store_failed_build_leaves_nothing_finished(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError, match="the builder broke"):
        store.get("disk", {"size": 1}, CountingBuild(fail=True))
    assert finished_dirs(tmp_path) == []
    build = CountingBuild()
    path = store.get("disk", {"size": 1}, build)  # the next attempt builds afresh
    assert build.calls == 1
    assert (path / "disk.img").read_text() == "build 1"


@pytest.mark.parametrize(
    ("inputs_a", "inputs_b", "same"),
    [
        ({"size": 1}, {"size": 2}, False),
        ({"size": 1}, {"size": 1, "format": "raw"}, False),
        ({"size": 1, "format": "raw"}, {"format": "raw", "size": 1}, True),
    ],
)
def test_store_addresses_by_inputs(
    tmp_path: Path, inputs_a: dict[str, Any], inputs_b: dict[str, Any], same: bool
) -> None:
    store = ArtifactStore(tmp_path)
    build = CountingBuild()
    a = store.get("disk", inputs_a, build)
    b = store.get("disk", inputs_b, build)
    assert (a == b) is same
    assert build.calls == (1 if same else 2)


def test_store_kinds_do_not_share(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    build = CountingBuild()
    assert store.get("disk", {"size": 1}, build) != store.get("iso", {"size": 1}, build)
