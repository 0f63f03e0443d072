"""Each profile's libvirt domain has that platform's virtual hardware."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab.targets.libvirt import QEMU_NS, domain_xml, needs_passthrough
from lab.targets.profiles import PROFILES
from lab.targets.run import Run

EMULATED = [name for name, profile in PROFILES.items() if not profile.not_emulated]


def render(profile_name: str, base_format: str = "qcow2", *, cdrom: bool = False) -> ET.Element:
    profile = PROFILES[profile_name]
    disks = [(Path("/run/x/disk.qcow2"), "qcow2", False)]
    if cdrom:
        disks = [(Path("/run/x/base.iso"), "raw", True), (Path("/run/x/scratch.vdi"), "vdi", False)]
    passthrough = needs_passthrough(profile, {base_format} | {fmt for _, fmt, _ in disks})
    xml = domain_xml(
        name="ucvm-1-t-1",
        domain_type="qemu",
        profile=profile,
        disks=disks,
        console_log=Path("/run/x/console.log"),
        channel=Path("/run/x/channel.sock"),
        run=Run("1", Path("/var/tmp/ucvm-test")),
        target="t",
        passthrough=passthrough,
    )
    return ET.fromstring(xml)


def qemu_args(domain: ET.Element) -> str:
    return " ".join(arg.get("value", "") for arg in domain.iter(f"{{{QEMU_NS}}}arg"))


@pytest.mark.parametrize("name", EMULATED)
def test_machine_nic_and_consoles(name: str) -> None:
    profile, domain = PROFILES[name], render(name)
    assert domain.find("os/type").get("machine") == profile.machine
    assert domain.find("devices/interface").get("type") == "user"
    assert domain.find("devices/interface/model").get("type") == profile.nic_model
    serials = domain.findall("devices/serial")
    assert [s.get("type") for s in serials] == ["file", "unix"]
    assert domain.find("metadata")[0].get("run") == "1"
    assert domain.find("metadata")[0].get("root") == "/var/tmp/ucvm-test"


@pytest.mark.parametrize(
    ("name", "bus", "controller"),
    [
        ("kvm", "virtio", None),
        ("openstack", "virtio", None),
        ("vmware", "scsi", "vmpvscsi"),
        ("gce", "scsi", "virtio-scsi"),
        ("virtualbox", "sata", None),
    ],
)
def test_disk_bus_of_libvirt_managed_disks(name: str, bus: str, controller: str | None) -> None:
    domain = render(name)
    assert domain.find("devices/disk/target").get("bus") == bus
    assert domain.find("devices/disk/boot").get("order") == "1"
    scsi = domain.find("devices/controller[@type='scsi']")
    assert (scsi.get("model") if scsi is not None else None) == controller


def test_ec2_disk_is_nvme_passed_to_qemu() -> None:
    domain = render("ec2")
    assert domain.find("devices/disk") is None
    assert "nvme,serial=ucvm0,bus=pcie.0,addr=0x10,drive=ucvm-disk0,bootindex=1" in qemu_args(
        domain
    )


def test_hyperv_vhdx_goes_to_qemu_on_ide_with_enlightenments() -> None:
    domain = render("hyperv", base_format="vhdx")
    assert "ide-hd,bus=ide.0,drive=ucvm-disk0,bootindex=1" in qemu_args(domain)
    assert {e.tag for e in domain.find("features/hyperv")} == {"relaxed", "vapic"}
    assert domain.find("clock/timer").get("name") == "hypervclock"


def test_hyperv_fixed_vhd_stays_with_libvirt() -> None:
    domain = render("hyperv", base_format="vpc")
    assert domain.find("devices/disk/target").get("bus") == "ide"
    assert qemu_args(domain) == ""


def test_iso_boot_has_a_cdrom_first_and_a_blank_disk() -> None:
    disks = render("virtualbox", "raw", cdrom=True).findall("devices/disk")
    assert [d.get("device") for d in disks] == ["cdrom", "disk"]
    assert disks[0].find("readonly") is not None
    assert disks[0].find("boot").get("order") == "1"
    assert disks[1].find("driver").get("type") == "vdi"
