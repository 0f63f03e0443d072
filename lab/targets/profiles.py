"""Platform profiles: what each platform looks like to the guest.

A profile run proves the image works with that platform's virtual hardware and disk format
under QEMU; only a real-platform run proves the platform itself. ``notes`` say what QEMU
cannot imitate, and a profile QEMU cannot emulate at all says why in ``not_emulated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    platform: str  # the support table's row
    machine: str  # QEMU machine type: pc (i440FX/PIIX) or q35 (ICH9)
    disk_bus: str  # virtio | scsi | sata | ide | nvme
    nic_model: str  # QEMU NIC model
    image_format: str  # the format the platform takes (lab.build.bootloader)
    nic_driver: str  # the Linux driver the guest must bind to that NIC
    scsi_controller: str | None = None  # libvirt controller model when disk_bus is scsi
    scratch_format: str = "qcow2"  # the blank disk beside an ISO
    hyperv_flags: tuple[str, ...] = ()  # Hyper-V enlightenments QEMU accepts under TCG
    not_emulated: str = ""  # why QEMU here cannot run this platform at all
    notes: str = ""
    # How the platform hands the guest its user-data (lab.build.context), first = default
    channels: tuple[str, ...] = ("nocloud",)


VIRTIO: dict[str, Any] = dict(
    machine="pc",
    disk_bus="virtio",
    nic_model="virtio",
    nic_driver="virtio_net",
    image_format="qcow2",
)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("kvm", "KVM", **VIRTIO),  # plain KVM (libvirt, virt-install): a NoCloud ISO
        Profile(
            "openstack", "OpenStack", **VIRTIO, channels=("config-drive", "openstack-metadata")
        ),
        Profile("opennebula", "OpenNebula", **VIRTIO, channels=("opennebula",)),
        Profile(
            "vmware",
            "VMware",
            machine="pc",
            disk_bus="scsi",
            scsi_controller="vmpvscsi",
            nic_model="vmxnet3",
            nic_driver="vmxnet3",
            image_format="ova",
            channels=("ovf", "guestinfo"),
        ),
        Profile(
            "virtualbox",
            "VirtualBox",
            machine="q35",
            disk_bus="sata",
            nic_model="e1000",
            nic_driver="e1000",
            image_format="iso",
            scratch_format="vdi",
        ),
        Profile(
            "hyperv",
            "Microsoft Hyper-V",
            machine="pc",
            disk_bus="ide",
            nic_model="tulip",
            nic_driver="tulip",
            image_format="vhdx",
            hyperv_flags=("relaxed", "vapic", "time"),
            notes="Generation 1 VM: IDE disk, legacy (DEC 21140) NIC; QEMU has no VMBus",
        ),
        Profile(
            "ec2",
            "Amazon EC2",
            machine="q35",
            disk_bus="nvme",
            nic_model="virtio",
            nic_driver="virtio_net",
            image_format="raw",
            notes="NVMe disk as on Nitro; QEMU has no ENA NIC, so virtio-net stands in",
            channels=("ec2-imds",),
        ),
        Profile(
            "gce",
            "Google Compute Engine",
            machine="pc",
            disk_bus="scsi",
            scsi_controller="virtio-scsi",
            nic_model="virtio",
            nic_driver="virtio_net",
            image_format="gce-tar",
            notes="QEMU has no gVNIC, so virtio-net stands in",
            channels=("gce-metadata",),
        ),
        Profile(
            "xen",
            "Xen",
            machine="xenfv",
            disk_bus="xen",
            nic_model="netfront",
            nic_driver="xen-netfront",
            image_format="raw",
            not_emulated="QEMU 7.2 here has no Xen machine or accelerator; needs a xen:/// host",
        ),
        Profile(
            "parallels",
            "Parallels",
            machine="",
            disk_bus="",
            nic_model="",
            nic_driver="",
            image_format="raw",
            not_emulated="Parallels has no emulation in QEMU; needs a parallels:/// host",
        ),
    )
}
