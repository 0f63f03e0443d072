"""The libvirt domain of one instance: the platform profile's virtual hardware as domain XML.

A pure function of its inputs (tests/test_domain_xml.py renders every profile without a
host). What libvirt 9.0 cannot describe (NVMe disks, vhdx chains, guestfwd) goes to QEMU
directly as <qemu:commandline> arguments.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from lab.run import Run
from lab.targets.base import TargetError
from lab.targets.libvirt.network import GuestNetwork, user_network
from lab.targets.profiles import Profile

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
LAB_NS = "https://ucvm-lab.invalid/ns/instance/1"  # the lab's attributes on a domain
MEMORY_MIB = 768

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("ucvm", LAB_NS)


def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def disk_element(
    devices: ET.Element,
    path: Path,
    fmt: str,
    bus: str,
    dev: str,
    *,
    cdrom: bool = False,
    boot_order: int | None = None,
) -> None:
    disk = sub(devices, "disk", type="file", device="cdrom" if cdrom else "disk")
    sub(disk, "driver", name="qemu", type=fmt)
    sub(disk, "source", file=str(path))
    sub(disk, "target", dev=dev, bus=bus)
    if cdrom:
        sub(disk, "readonly")
    if boot_order:
        sub(disk, "boot", order=str(boot_order))


DEVICE_NAMES = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}
# Image formats libvirt 9.0 can describe; a chain with any other (vhdx) goes to QEMU directly.
LIBVIRT_FORMATS = {"raw", "qcow2", "vmdk", "vdi", "vpc"}
# QEMU devices for disks libvirt does not manage: libvirt 9.0 has no NVMe disk bus.
# PCI ones get slots from 0x10 up, clear of those libvirt assigns (from 0x1).
QEMU_DISK_DEVICES = {
    "nvme": "nvme,serial=ucvm{index},bus={pci_bus},addr={slot:#x}",
    "virtio": "virtio-blk-pci,bus={pci_bus},addr={slot:#x}",
    "ide": "ide-hd,bus=ide.{index}",
}


def needs_passthrough(profile: Profile, formats: set[str]) -> bool:
    return profile.disk_bus == "nvme" or not formats <= LIBVIRT_FORMATS


def add_disks(
    devices: ET.Element,
    qemu_args: list[str],
    profile: Profile,
    disks: list[tuple[Path, str, bool]],
    passthrough: bool,
) -> None:
    """disks: (path, qemu format, is_cdrom) in boot order."""
    if profile.scsi_controller:
        sub(devices, "controller", type="scsi", index="0", model=profile.scsi_controller)
    for index, (path, fmt, cdrom) in enumerate(disks):
        if passthrough:
            if cdrom or profile.disk_bus not in QEMU_DISK_DEVICES:
                raise TargetError(f"cannot pass a {profile.disk_bus} disk straight to QEMU")
            drive = f"ucvm-disk{index}"
            device = QEMU_DISK_DEVICES[profile.disk_bus].format(
                index=index,
                slot=0x10 + index,
                pci_bus="pcie.0" if profile.machine == "q35" else "pci.0",
            )
            qemu_args += [
                "-drive",
                f"file={path},if=none,id={drive},format={fmt}",
                "-device",
                f"{device},drive={drive}" + (",bootindex=1" if index == 0 else ""),
            ]
            continue
        dev = DEVICE_NAMES[profile.disk_bus] + "abcdefgh"[index]
        disk_element(
            devices,
            path,
            fmt,
            profile.disk_bus,
            dev,
            cdrom=cdrom,
            boot_order=1 if index == 0 else None,
        )


def domain_xml(
    *,
    name: str,
    domain_type: str,
    profile: Profile,
    disks: list[tuple[Path, str, bool]],
    console_log: Path,
    channel: Path,
    run: Run,
    target: str,
    passthrough: bool = False,
    direct_boot: tuple[Path, Path, str] | None = None,
    uuid: str | None = None,
    boot_args: Sequence[str] = (),
    host_services: Mapping[str, int] | None = None,
    network: GuestNetwork | None = None,
    smbios: Mapping[str, Mapping[str, str]] | None = None,
    context_medium: Path | None = None,
) -> str:
    """The domain of one instance. ``smbios`` is the platform's identity by SMBIOS section
    (``{"system": {"manufacturer": "Amazon EC2"}}``); ``context_medium`` an ISO attached as a
    CD-ROM after the disks (the contextualization channel's medium)."""
    domain = ET.Element("domain", type=domain_type)
    sub(domain, "name", name)
    if uuid:
        sub(domain, "uuid", uuid)
    metadata = sub(domain, "metadata")
    ET.SubElement(
        metadata,
        f"{{{LAB_NS}}}instance",
        run=run.id,
        root=str(run.root),
        target=target,
        profile=profile.name,
    )
    sub(domain, "memory", str(MEMORY_MIB), unit="MiB")
    sub(domain, "vcpu", "1")
    os_element = sub(domain, "os")
    sub(os_element, "type", "hvm", arch="x86_64", machine=profile.machine)
    if boot_args or smbios:  # per-instance boot options and the platform's identity
        sub(os_element, "smbios", mode="sysinfo")
        sysinfo = sub(domain, "sysinfo", type="smbios")
        for section in SMBIOS_SECTIONS:  # in the order libvirt's schema wants
            entries = (smbios or {}).get(section, {})
            if not entries:
                continue
            block = sub(sysinfo, section)
            for key, value in entries.items():
                sub(block, "entry", value, name=key)
        if boot_args:  # read by /init beside the kernel command line
            oem = sub(sysinfo, "oemStrings")
            for arg in boot_args:
                sub(oem, "entry", arg)
    if direct_boot:
        kernel, initrd, cmdline = direct_boot
        sub(os_element, "kernel", str(kernel))
        sub(os_element, "initrd", str(initrd))
        sub(os_element, "cmdline", cmdline)
    features = sub(domain, "features")
    sub(features, "acpi")
    sub(features, "apic")
    clock = sub(domain, "clock", offset="utc")
    if profile.hyperv_flags:
        hyperv = sub(features, "hyperv", mode="custom")
        for flag in profile.hyperv_flags:
            if flag == "time":
                sub(clock, "timer", name="hypervclock", present="yes")
            else:
                sub(hyperv, flag, state="on")
    for event, action in (
        ("on_poweroff", "destroy"),
        ("on_reboot", "restart"),
        ("on_crash", "destroy"),
    ):
        sub(domain, event, action)

    devices = sub(domain, "devices")
    qemu_args: list[str] = []
    add_disks(devices, qemu_args, profile, disks, passthrough)
    if context_medium:
        bus = cdrom_bus(profile)
        disk_element(devices, context_medium, "raw", bus, DEVICE_NAMES[bus] + "c", cdrom=True)
        if bus == "scsi":  # a SCSI target of its own: PVSCSI has one LUN per target
            medium = devices.findall("disk")[-1]
            sub(medium, "address", type="drive", controller="0", bus="0", target="2", unit="0")
    qemu_args += user_network(profile, host_services or {}, network or GuestNetwork())
    console = sub(devices, "serial", type="file")
    sub(console, "source", path=str(console_log))
    sub(console, "target", port="0")
    control = sub(devices, "serial", type="unix")
    sub(control, "source", mode="bind", path=str(channel))
    sub(control, "target", port="1")
    sub(devices, "memballoon", model="none")
    if qemu_args:
        commandline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
        for arg in qemu_args:
            ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(domain, encoding="unicode")


SMBIOS_SECTIONS = ("bios", "system", "baseBoard", "chassis")


def channel_boot_args(boot_args: Sequence[str], key: str) -> list[str]:
    """The boot options with the console channel's key: an SMBIOS OEM string, which only
    root in the guest reads (never the kernel command line, which every process sees)."""
    return [*boot_args, f"ucvm.channel_key={key}"]


def cdrom_bus(profile: Profile) -> str:
    """Where a platform puts a CD-ROM: on its disk bus when that bus takes one, else on the
    machine's own ATA controller (IDE on i440FX, SATA/AHCI on Q35)."""
    if profile.disk_bus in ("scsi", "sata", "ide"):
        return profile.disk_bus
    return "sata" if profile.machine == "q35" else "ide"
