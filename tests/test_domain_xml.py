"""Each profile's libvirt domain has that platform's virtual hardware."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from lab.run import Run
from lab.targets.libvirt import LibvirtInstance
from lab.targets.libvirt.domain import QEMU_NS, channel_boot_args, domain_xml, needs_passthrough
from lab.targets.libvirt.network import GuestNetwork
from lab.targets.profiles import PROFILES

EMULATED = [name for name, profile in PROFILES.items() if not profile.not_emulated]
MAC = "52:54:00:aa:bb:cc"
NETWORK = GuestNetwork(mac=MAC)
NETDEV = "user,id=ucvm-net0,restrict=on,net=169.254.169.0/24"


def render(
    profile_name: str,
    base_format: str = "qcow2",
    *,
    cdrom: bool = False,
    uuid: str | None = None,
    boot_args: Sequence[str] = (),
    host_services: Mapping[str, int] | None = None,
    network: GuestNetwork = NETWORK,
    smbios: Mapping[str, Mapping[str, str]] | None = None,
    context_medium: Path | None = None,
) -> ET.Element:
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
        uuid=uuid,
        boot_args=boot_args,
        host_services=host_services,
        network=network,
        smbios=smbios,
        context_medium=context_medium,
    )
    return ET.fromstring(xml)


def qemu_arg_list(domain: ET.Element) -> list[str]:
    return [arg.get("value", "") for arg in domain.iter(f"{{{QEMU_NS}}}arg")]


def qemu_args(domain: ET.Element) -> str:
    return " ".join(qemu_arg_list(domain))


def qemu_option(domain: ET.Element, option: str) -> list[str]:
    """The values given to QEMU's ``option`` (``-netdev``, ``-device``), in order."""
    args = qemu_arg_list(domain)
    return [value for flag, value in itertools.pairwise(args) if flag == option]


@pytest.mark.parametrize("name", EMULATED)
def test_machine_and_consoles(name: str) -> None:
    profile, domain = PROFILES[name], render(name)
    assert domain.find("os/type").get("machine") == profile.machine
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
    assert qemu_option(domain, "-drive") == []
    assert qemu_arg_list(domain) == [  # QEMU gets the network only
        "-netdev",
        NETDEV,
        "-device",
        f"tulip,netdev=ucvm-net0,bus=pci.0,addr=0x18,mac={MAC}",
    ]


def test_iso_boot_has_a_cdrom_first_and_a_blank_disk() -> None:
    disks = render("virtualbox", "raw", cdrom=True).findall("devices/disk")
    assert [d.get("device") for d in disks] == ["cdrom", "disk"]
    assert disks[0].find("readonly") is not None
    assert disks[0].find("boot").get("order") == "1"
    assert disks[1].find("driver").get("type") == "vdi"


# --- network: QEMU user networking, given to QEMU directly --------------------------------------


@pytest.mark.parametrize(
    ("name", "device"),
    [
        ("kvm", "virtio-net-pci,netdev=ucvm-net0,bus=pci.0,addr=0x18"),
        ("openstack", "virtio-net-pci,netdev=ucvm-net0,bus=pci.0,addr=0x18"),
        ("opennebula", "virtio-net-pci,netdev=ucvm-net0,bus=pci.0,addr=0x18"),
        ("vmware", "vmxnet3,netdev=ucvm-net0,bus=pci.0,addr=0x18"),
        ("virtualbox", "e1000,netdev=ucvm-net0,bus=pcie.0,addr=0x18"),
        ("hyperv", "tulip,netdev=ucvm-net0,bus=pci.0,addr=0x18"),
        ("ec2", "virtio-net-pci,netdev=ucvm-net0,bus=pcie.0,addr=0x18"),
        ("gce", "virtio-net-pci,netdev=ucvm-net0,bus=pci.0,addr=0x18"),
    ],
)
def test_nic_is_the_platform_s_model_on_user_networking(name: str, device: str) -> None:
    assert sorted(EMULATED) == sorted(
        ["kvm", "openstack", "opennebula", "vmware", "virtualbox", "hyperv", "ec2", "gce"]
    )  # a new profile needs its row here
    domain = render(name)
    assert domain.find("devices/interface") is None  # not libvirt's: it cannot do guestfwd
    assert qemu_option(domain, "-netdev") == [NETDEV]
    nics = [d for d in qemu_option(domain, "-device") if "netdev=" in d]
    assert nics == [f"{device},mac={MAC}"]


@pytest.mark.parametrize(
    ("name", "base_format"),
    [("kvm", "vhdx"), ("openstack", "vhdx"), ("ec2", "qcow2"), ("ec2", "vhdx"), ("hyperv", "vhdx")],
)
def test_nic_slot_is_clear_of_passed_through_disks(name: str, base_format: str) -> None:
    domain = render(name, base_format)
    assert qemu_option(domain, "-drive")  # the disk goes to QEMU too
    devices = qemu_option(domain, "-device")
    slots = [part for device in devices for part in device.split(",") if part.startswith("addr=")]
    assert "addr=0x18" in slots
    assert len(slots) == len(set(slots)), devices


def test_host_services_are_guest_forwards_to_the_host_s_loopback() -> None:
    domain = render("kvm", host_services={"169.254.169.100:80": 8123})
    assert qemu_option(domain, "-netdev") == [
        f"{NETDEV},guestfwd=tcp:169.254.169.100:80-cmd:socat - TCP:127.0.0.1:8123"
    ]


def test_several_host_services_in_a_stable_order() -> None:
    services = {"169.254.169.254:80": 9000, "169.254.169.100:80": 8123}
    netdev = (
        NETDEV + ",guestfwd=tcp:169.254.169.100:80-cmd:socat - TCP:127.0.0.1:8123"
        ",guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:9000"
    )
    assert qemu_option(render("ec2", host_services=services), "-netdev") == [netdev]
    reordered = dict(reversed(services.items()))
    assert qemu_option(render("ec2", host_services=reordered), "-netdev") == [netdev]


def test_no_host_services_forward_nothing() -> None:
    for services in (None, {}):
        assert "guestfwd" not in qemu_args(render("kvm", host_services=services))


# --- per-instance identity and boot options ---------------------------------------------------


def test_boot_args_are_smbios_oem_strings() -> None:
    args = ["ucvm.version=1.1", "ucvm.cache_max_mb=64"]
    domain = render("kvm", boot_args=args)
    assert domain.find("os/smbios").get("mode") == "sysinfo"
    sysinfo = domain.findall("sysinfo")
    assert [s.get("type") for s in sysinfo] == ["smbios"]
    assert [e.text for e in sysinfo[0].findall("oemStrings/entry")] == args


def test_the_channel_key_is_an_oem_string_of_each_instance_s_own(tmp_path: Path) -> None:
    first, second = (
        LibvirtInstance(f"i{n}", None, PROFILES["kvm"], tmp_path)  # type: ignore[arg-type]
        for n in (1, 2)
    )
    assert re.fullmatch(r"[0-9a-f]{64}", first.channel_key)
    assert first.channel_key != second.channel_key
    args = channel_boot_args(["ucvm.version=1.1"], first.channel_key)
    domain = render("kvm", boot_args=args)
    assert [e.text for e in domain.findall("sysinfo/oemStrings/entry")] == [
        "ucvm.version=1.1",
        f"ucvm.channel_key={first.channel_key}",
    ]
    assert first.channel_key not in " ".join(e.text or "" for e in domain.iter("cmdline"))


def test_without_boot_args_there_is_no_sysinfo() -> None:
    domain = render("kvm")
    assert domain.find("os/smbios") is None
    assert domain.find("sysinfo") is None


def test_boot_args_of_a_q35_profile() -> None:
    domain = render("virtualbox", boot_args=["ucvm.version=previous"])
    assert domain.find("os/type").get("machine") == "q35"
    assert [e.text for e in domain.findall("sysinfo/oemStrings/entry")] == ["ucvm.version=previous"]


def test_uuid_is_the_domain_s() -> None:
    uuid = "5f0c3e8a-2b1d-4c6e-9a7f-0e1d2c3b4a59"
    assert render("kvm", uuid=uuid).find("uuid").text == uuid
    assert render("kvm").find("uuid") is None  # libvirt then makes one up


# --- contextualization: the SSH forward, the platform's identity, the medium ---------------------


def test_ssh_forward_listens_on_the_host_s_loopback_only() -> None:
    domain = render("kvm", network=GuestNetwork(mac=MAC, ssh_port=2222))
    assert qemu_option(domain, "-netdev") == [f"{NETDEV},hostfwd=tcp:127.0.0.1:2222-:22"]


def test_smbios_identity_and_boot_args_share_the_sysinfo() -> None:
    uuid = "ec2c0ffe-0000-4000-8000-0000000000aa"
    identity = {"system": {"manufacturer": "Amazon EC2", "uuid": uuid},
                "bios": {"vendor": "Amazon EC2"}}  # fmt: skip
    domain = render("ec2", smbios=identity, boot_args=["ucvm.os=none"], uuid=uuid)
    sysinfo = domain.find("sysinfo")
    assert [child.tag for child in sysinfo] == ["bios", "system", "oemStrings"]  # schema order
    system = {e.get("name"): e.text for e in sysinfo.find("system")}
    assert system["manufacturer"] == "Amazon EC2" and system["uuid"] == domain.find("uuid").text
    assert domain.find("os/smbios").get("mode") == "sysinfo"


@pytest.mark.parametrize(
    ("name", "bus"),
    [
        ("kvm", "ide"),
        ("ec2", "sata"),
        ("vmware", "scsi"),
        ("virtualbox", "sata"),
        ("hyperv", "ide"),
    ],
)
def test_context_medium_is_a_cdrom_on_the_platform_s_bus(name: str, bus: str) -> None:
    domain = render(name, context_medium=Path("/run/x/nocloud.iso"))
    disks = domain.findall("devices/disk")
    medium = next(d for d in disks if d.find("source").get("file").endswith("nocloud.iso"))
    assert medium.get("device") == "cdrom" and medium.find("readonly") is not None
    assert medium.find("target").get("bus") == bus
    assert medium.find("boot") is None  # the platform boots its image, not the medium
