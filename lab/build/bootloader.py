"""The boot loader image: a kernel and a busybox initramfs whose /init boots the appliance.

Built once per input hash (see artifacts.py), in every format a platform takes:

    raw       MBR disk, one FAT partition (label UCVM_BOOT) booted by SYSLINUX
    iso       hybrid ISO (ISOLINUX; also bootable when written to a disk)
    qcow2     KVM, OpenStack, OpenNebula
    ova       VMware: a streamOptimized VMDK with its OVF descriptor and manifest
    vdi       VirtualBox
    vhd       fixed VHD (Hyper-V Generation 1, Azure)
    vhdx      Hyper-V
    gce-tar   Google Compute Engine: disk.raw (a whole number of GiB) in a .tar.gz

The kernel carries the drivers of every platform the lab knows, and only those (the paper:
about 100 modules instead of 2,000): PLATFORM_DRIVERS plus what they depend on.

The lab builds every loader version of LOADER_VERSIONS. The images carry IMAGE_LOADER; any
other version is a kernel and an initramfs only (what the repository publishes for a staged
update, kexec'd into by the image's loader), and differs from it only in /etc/ucvm/version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lab import proc
from lab.artifacts import ArtifactStore, file_digest
from lab.build import kernel as kernel_pkg
from lab.build.blockd import BLOCKD_SOURCE, build_blockd
from lab.build.osrepo.keys import SigningKey, default_key_path

LOADER_VERSIONS = ("0.1", "0.2")  # built by `ucvm-lab build`, published by the session
IMAGE_LOADER = "0.1"  # the version the disk images boot
KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200 loglevel=4"
# Where /init looks for the OS repository unless told otherwise (DEFAULT_REPO in
# initramfs/functions); the lab forwards this guest address to its server on 127.0.0.1.
GUEST_REPO_ADDRESS = "169.254.169.100:80"

PLATFORM_DRIVERS: dict[str, tuple[str, ...]] = {
    "virtio (KVM, OpenStack, OpenNebula, GCE)": (
        "virtio_pci",
        "virtio_blk",
        "virtio_net",
        "virtio_scsi",
    ),
    "VMware": ("vmw_pvscsi", "vmxnet3", "e1000", "mptspi"),
    "VirtualBox": ("ahci", "e1000", "ata_piix"),
    "Hyper-V": ("hv_vmbus", "hv_storvsc", "hv_netvsc", "ata_piix", "tulip"),
    "Xen": ("xen_blkfront", "xen_netfront"),
    "Amazon EC2": ("nvme", "ena", "xen_blkfront", "xen_netfront"),
    "Google Compute Engine": ("virtio_scsi", "gve"),
    "disks and file systems": ("sd_mod", "sr_mod", "isofs", "ext4", "crc32c_generic"),
    "OS on demand (block client, snapshot, union root)": ("nbd", "squashfs", "overlay"),
}

IMAGE_FORMATS = ("raw", "iso", "qcow2", "ova", "vdi", "vhd", "vhdx", "gce-tar")
IMAGE_FILES = {
    "raw": "ucvm.raw",
    "iso": "ucvm.iso",
    "qcow2": "ucvm.qcow2",
    "ova": "ucvm.ova",
    "vdi": "ucvm.vdi",
    "vhd": "ucvm.vhd",
    "vhdx": "ucvm.vhdx",
    "gce-tar": "ucvm-gce.tar.gz",
}
# How QEMU reads each format (the OVA and the GCE tarball are unpacked first, see disk_for_qemu).
QEMU_FORMATS = {
    "raw": "raw",
    "iso": "raw",
    "qcow2": "qcow2",
    "ova": "vmdk",
    "vdi": "vdi",
    "vhd": "vpc",
    "vhdx": "vhdx",
    "gce-tar": "raw",
}

SYSLINUX_BIOS = Path("/usr/lib/syslinux/modules/bios")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
ISOHYBRID_MBR = Path("/usr/lib/ISOLINUX/isohdpfx.bin")
BUSYBOX = Path("/bin/busybox")
MiB = 1 << 20
GiB = 1 << 30


class BuildError(RuntimeError):
    """A step of the image build failed; the message names the command and its error."""


@dataclass(frozen=True)
class BootLoader:
    """The built boot loader: its parts and its images, all inside ``root``."""

    root: Path
    kernel_release: str
    version: str = IMAGE_LOADER  # the loader version (/etc/ucvm/version)

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.root / "initrd.img"

    @property
    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())

    def image(self, image_format: str) -> Path:
        if image_format not in IMAGE_FILES:
            raise BuildError(
                f"unknown image format {image_format!r}; known: {', '.join(IMAGE_FORMATS)}"
            )
        if self.version != IMAGE_LOADER:
            raise BuildError(
                f"loader {self.version} has no disk images (a kernel and an initramfs only): "
                f"the images boot loader {IMAGE_LOADER}"
            )
        return self.root / IMAGE_FILES[image_format]

    def disk_for_qemu(self, image_format: str) -> tuple[Path, str]:
        """The file QEMU opens for ``image_format`` and QEMU's name for its format."""
        unpacked = {"ova": "ucvm-disk1.vmdk", "gce-tar": "disk.raw"}
        if image_format in unpacked:
            return self.root / "unpacked" / unpacked[image_format], QEMU_FORMATS[image_format]
        return self.image(image_format), QEMU_FORMATS[image_format]


def run(*args: str | Path, cwd: Path | None = None) -> None:
    """A build step's command; BuildError names it, its exit code and its stderr's tail."""
    proc.run(*args, cwd=cwd, error=BuildError)


# --- modules ------------------------------------------------------------------------------


def module_name(path: str) -> str:
    return Path(path).name.removesuffix(".ko").replace("-", "_")


def read_module_deps(modules_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (path relative to modules_dir, [dependency paths]) from modules.dep."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        deps[module_name(path)] = (path, needs.split())
    return deps


def module_closure(wanted: set[str], deps: dict[str, tuple[str, list[str]]]) -> list[str]:
    """Relative paths of the wanted modules and everything they depend on."""
    by_path = {path: needs for path, needs in deps.values()}
    missing = sorted(name for name in wanted if name not in deps)
    if missing:
        raise BuildError(f"the kernel has no module(s) {', '.join(missing)}")
    todo = [deps[name][0] for name in sorted(wanted)]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(by_path[path])
    return sorted(seen)


def wanted_modules() -> set[str]:
    return {name for drivers in PLATFORM_DRIVERS.values() for name in drivers}


# --- initramfs ----------------------------------------------------------------------------


def stage_initramfs(
    kernel: kernel_pkg.Kernel,
    stage: Path,
    repo_public_key: str,
    loader_version: str = IMAGE_LOADER,
) -> list[str]:
    """Lay out the initramfs tree in ``stage``; returns the module paths it carries.
    ``repo_public_key`` is the OS repository's key line: the guest trusts only what it signs."""
    for directory in ("bin", "dev", "etc/ucvm", "proc", "sys", "run", "tmp", "scratch"):
        (stage / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, stage / "bin" / "busybox")
    applets = proc.run(BUSYBOX, "--list", error=BuildError)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (stage / "bin" / applet).symlink_to("busybox")
    (stage / "sbin").symlink_to("bin")
    os.mknod(stage / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))

    guest = resources.files("lab.build") / "initramfs"
    guest_files = (
        "init",
        "functions",
        "context",
        "pin",
        "kexec",
        "rebase",
        "rebase-accounts",
        "rebase-dpkg",
        "carry",
        "udhcpc.script",
        "always-modules",
    )
    for name in guest_files:
        target = stage / ("init" if name == "init" else f"etc/ucvm/{name}")
        target.write_bytes((guest / name).read_bytes())
        target.chmod(0o755)
    (stage / "etc/ucvm/version").write_text(loader_version + "\n")
    (stage / "etc/ucvm/repo.pub").write_text(repo_public_key.strip() + "\n")
    build_blockd(stage / "bin")

    modules_dir = kernel.modules
    carried = module_closure(wanted_modules(), read_module_deps(modules_dir))
    target_modules = stage / "lib" / "modules" / kernel.release
    for relative in carried:
        (target_modules / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(modules_dir / relative, target_modules / relative)
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(modules_dir / meta, target_modules / meta)
    run("depmod", "-b", stage, kernel.release)
    return carried


def pack_initramfs(stage: Path, output: Path) -> None:
    """newc cpio, xz-compressed with the CRC32 check the kernel's decompressor wants."""
    files = proc.run("find", ".", "-mindepth", "1", cwd=stage, text=False, error=BuildError).stdout
    cpio = proc.run(
        "cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0", "--reproducible",
        cwd=stage, input=files, text=False, error=BuildError,
    ).stdout  # fmt: skip
    compressed = proc.run(
        "xz", "-9", "--check=crc32", "--threads=1", input=cpio, text=False, error=BuildError
    ).stdout
    output.write_bytes(compressed)


# --- images -------------------------------------------------------------------------------

SYSLINUX_CFG = f"""SERIAL 0 115200
DEFAULT ucvm
PROMPT 0
TIMEOUT 0
LABEL ucvm
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND {KERNEL_CMDLINE}
"""


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def build_raw(out: Path, work: Path) -> Path:
    """MBR + one bootable FAT partition holding SYSLINUX, the kernel and the initramfs."""
    payload = (out / "vmlinuz").stat().st_size + (out / "initrd.img").stat().st_size
    fat_size = round_up(payload + 2 * MiB, MiB)
    fat = work / "boot.fat"
    # 32 KiB clusters: SYSLINUX reads a cluster per BIOS call, and each call is slow under TCG.
    run(
        "mkfs.vfat",
        "-n",
        "UCVM_BOOT",
        "-i",
        "0c0ffee0",
        "-s",
        "64",
        "-C",
        fat,
        str(fat_size // 1024),
    )
    (work / "syslinux.cfg").write_text(SYSLINUX_CFG)
    run("mcopy", "-i", fat, out / "vmlinuz", out / "initrd.img", work / "syslinux.cfg", "::/")
    run("syslinux", "--install", fat)

    disk = out / IMAGE_FILES["raw"]
    with disk.open("wb") as stream:
        stream.truncate(MiB + fat_size)
    layout = "label: dos\nstart=2048, type=1, bootable\n"  # type 1: FAT12, what mkfs made
    proc.run("sfdisk", "-q", disk, input=layout, error=BuildError)
    with disk.open("r+b") as stream:
        stream.write(SYSLINUX_MBR.read_bytes()[:440])
        stream.seek(MiB)
        stream.write(fat.read_bytes())
    return disk


def build_iso(out: Path, work: Path) -> Path:
    tree = work / "iso"
    (tree / "isolinux").mkdir(parents=True)
    shutil.copy2(ISOLINUX_BIN, tree / "isolinux" / "isolinux.bin")
    shutil.copy2(SYSLINUX_BIOS / "ldlinux.c32", tree / "isolinux" / "ldlinux.c32")
    (tree / "isolinux" / "isolinux.cfg").write_text(SYSLINUX_CFG)
    shutil.copy2(out / "vmlinuz", tree / "vmlinuz")
    shutil.copy2(out / "initrd.img", tree / "initrd.img")
    iso = out / IMAGE_FILES["iso"]
    run(
        "xorriso",
        "-as",
        "mkisofs",
        "-quiet",
        "-o",
        iso,
        "-V",
        "UCVM_BOOT",
        "-isohybrid-mbr",
        ISOHYBRID_MBR,
        "-c",
        "isolinux/boot.cat",
        "-b",
        "isolinux/isolinux.bin",
        "-no-emul-boot",
        "-boot-load-size",
        "4",
        "-boot-info-table",
        "-J",
        "-R",
        tree,
    )
    return iso


def convert(
    raw: Path, output: Path, qemu_format: str, *options: str, compress: bool = False
) -> Path:
    args = [
        "qemu-img",
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        qemu_format,
        *(["-c"] if compress else []),
    ]
    for option in options:
        args += ["-o", option]
    run(*args, raw, output)
    return output


OVF_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
          xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
          xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="{vmdk}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1"
          ovf:fileRef="file1" ovf:populatedSize="{populated}"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="ucvm">
    <Info>A μCernVM-style boot loader appliance</Info>
    <Name>ucvm</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="other4xLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>ucvm</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>1024MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:ElementName>Serial port 1</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:ResourceType>21</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def build_ova(raw: Path, out: Path, work: Path) -> Path:
    """VMDK (streamOptimized) + OVF descriptor + SHA256 manifest, the OVF first as the spec says."""
    vmdk = convert(raw, work / "ucvm-disk1.vmdk", "vmdk", "subformat=streamOptimized")
    ovf = work / "ucvm.ovf"
    ovf.write_text(
        OVF_TEMPLATE.format(
            vmdk=vmdk.name,
            vmdk_size=vmdk.stat().st_size,
            capacity=raw.stat().st_size,
            populated=raw.stat().st_size,
        ),
        encoding="utf-8",
    )
    manifest = work / "ucvm.mf"
    manifest.write_text("".join(f"SHA256({p.name})= {file_digest(p)}\n" for p in (ovf, vmdk)))
    ova = out / IMAGE_FILES["ova"]
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member in (ovf, manifest, vmdk):
            tar.add(member, arcname=member.name)
    unpack_dir = out / "unpacked"
    unpack_dir.mkdir(exist_ok=True)
    shutil.copy2(vmdk, unpack_dir / vmdk.name)
    return ova


def build_gce_tar(raw: Path, out: Path) -> Path:
    """GCE wants a file named disk.raw whose size is a whole number of GiB, in a gzip'd tar."""
    unpack_dir = out / "unpacked"
    unpack_dir.mkdir(exist_ok=True)
    disk = unpack_dir / "disk.raw"
    shutil.copy2(raw, disk)
    with disk.open("r+b") as stream:
        stream.truncate(round_up(raw.stat().st_size, GiB))
    tarball = out / IMAGE_FILES["gce-tar"]
    run("tar", "--format=oldgnu", "-Sczf", tarball, "-C", unpack_dir, "disk.raw")
    return tarball


def build_images(out: Path, work: Path) -> None:
    raw = build_raw(out, work)
    build_iso(out, work)
    convert(raw, out / IMAGE_FILES["qcow2"], "qcow2", compress=True)
    build_ova(raw, out, work)
    convert(raw, out / IMAGE_FILES["vdi"], "vdi")
    convert(raw, out / IMAGE_FILES["vhd"], "vpc", "subformat=fixed,force_size=on")
    convert(raw, out / IMAGE_FILES["vhdx"], "vhdx")
    build_gce_tar(raw, out)


def gzip_size(path: Path) -> int:
    """Bytes of ``path`` after gzip -6: the size the image takes to download when compressed."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    size = 0
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(MiB), b""):
            size += len(compressor.compress(block))
    return size + len(compressor.flush())


def write_manifest(
    out: Path, kernel: kernel_pkg.Kernel, modules: list[str], loader_version: str
) -> None:
    """manifest.json: the parts, their sizes and hashes; the images' only for IMAGE_LOADER."""
    formats = IMAGE_FORMATS if loader_version == IMAGE_LOADER else ()
    images = {
        fmt: {
            "file": IMAGE_FILES[fmt],
            "bytes": (out / IMAGE_FILES[fmt]).stat().st_size,
            "gzip_bytes": gzip_size(out / IMAGE_FILES[fmt]),
            "sha256": file_digest(out / IMAGE_FILES[fmt]),
        }
        for fmt in formats
    }
    manifest = {
        "loader_version": loader_version,
        "kernel": {
            "package": kernel.package,
            "version": kernel.version,
            "release": kernel.release,
            "deb_sha256": kernel.deb_sha256,
        },
        "kernel_cmdline": KERNEL_CMDLINE,
        "modules": {
            "count": len(modules),
            "bytes": sum((kernel.modules / m).stat().st_size for m in modules),
            "names": sorted(module_name(m) for m in modules),
        },
        "vmlinuz_bytes": (out / "vmlinuz").stat().st_size,
        "vmlinuz_sha256": file_digest(out / "vmlinuz"),
        "initrd_bytes": (out / "initrd.img").stat().st_size,
        "initrd_sha256": file_digest(out / "initrd.img"),
        "images": images,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def files_digest(paths: Iterable[Path]) -> str:
    """One hash over the names and contents of files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions of the Debian packages whose bytes end up in the image."""
    packages = (
        "busybox-static", "syslinux-common", "isolinux", "qemu-utils", "xorriso",
        "libsodium-dev", "musl-tools",  # linked into the block client
    )  # fmt: skip
    return proc.package_versions(*packages)


def build(
    store: ArtifactStore | None = None,
    repo_public_key: str | None = None,
    loader_version: str = IMAGE_LOADER,
) -> BootLoader:
    """The boot loader for the current inputs, built once and cached by their hash.
    It trusts the OS repository key given, by default the lab's own (see lab.build.osrepo.keys).
    A ``loader_version`` other than IMAGE_LOADER is built without disk images."""
    if loader_version not in LOADER_VERSIONS:
        raise BuildError(
            f"unknown loader version {loader_version!r}; known: {', '.join(LOADER_VERSIONS)}"
        )
    images = loader_version == IMAGE_LOADER
    store = store or ArtifactStore()
    if repo_public_key is None:
        repo_public_key = SigningKey.load_or_create(default_key_path()).public_line()
    kernel = kernel_pkg.fetch(store)
    inputs = {
        "loader_version": loader_version,
        "images": images,
        "kernel_deb_sha256": kernel.deb_sha256,
        "guest_sources": files_digest((Path(__file__).parent / "initramfs").iterdir()),
        "block_client": files_digest([BLOCKD_SOURCE, BLOCKD_SOURCE.with_name("__init__.py")]),
        "repo_public_key": repo_public_key,
        "drivers": PLATFORM_DRIVERS,
        "cmdline": KERNEL_CMDLINE,
        "tools": tool_versions(),
        "builder": files_digest([Path(__file__), Path(kernel_pkg.__file__)]),  # the code too
    }

    def make(out: Path) -> None:
        work = out / "work"
        work.mkdir()
        shutil.copy2(kernel.vmlinuz, out / "vmlinuz")
        modules = stage_initramfs(kernel, work / "initramfs", repo_public_key, loader_version)
        pack_initramfs(work / "initramfs", out / "initrd.img")
        if images:
            build_images(out, work)
        write_manifest(out, kernel, modules, loader_version)
        shutil.rmtree(work)

    root = store.get("bootloader", inputs, make)
    return BootLoader(root, kernel.release, loader_version)
