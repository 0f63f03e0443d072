"""The instance's network: QEMU user networking with the host's services forwarded in.

The guest's user network is the link-local range clouds use (lab.build.context.GUEST_NETWORK),
so the metadata service sits at 169.254.169.254 as on EC2, GCE and OpenStack (guestfwd accepts
only addresses inside it). Nothing listens beyond the host's 127.0.0.1.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from lab.build import context as ctx
from lab.targets.profiles import Profile

NIC_DEVICES = {"virtio": "virtio-net-pci"}  # libvirt model name -> QEMU device, where they differ
NIC_SLOT = 0x18  # clear of the slots libvirt assigns and of the passed-through disks (0x10+)
GUEST_FORWARD = "socat - TCP:127.0.0.1:{port}"


@dataclass(frozen=True)
class GuestNetwork:
    """The instance's NIC address and the host ports it forwards to (``ssh_port``: the
    host's 127.0.0.1 port that reaches the guest's SSH server, or 0 for none)."""

    mac: str = field(default_factory=lambda: "52:54:00:" + ":".join(
        f"{b:02x}" for b in secrets.token_bytes(3)))  # fmt: skip
    ssh_port: int = 0


def user_network(
    profile: Profile, host_services: Mapping[str, int], network: GuestNetwork
) -> list[str]:
    """QEMU user networking, given to QEMU directly: libvirt 9.0 cannot describe guestfwd.

    Each host service is a guest address (``169.254.169.100:80``) whose connections QEMU
    hands, one spawned socat each, to a port on the host's 127.0.0.1. Nothing listens
    elsewhere; the SSH forward listens on 127.0.0.1 only."""
    netdev = f"user,id=ucvm-net0,restrict=on,net={ctx.GUEST_NETWORK}"  # the forwards, nothing else
    for guest, port in sorted(host_services.items()):
        netdev += f",guestfwd=tcp:{guest}-cmd:{GUEST_FORWARD.format(port=port)}"
    if network.ssh_port:
        netdev += f",hostfwd=tcp:127.0.0.1:{network.ssh_port}-:22"
    device = NIC_DEVICES.get(profile.nic_model, profile.nic_model)
    bus = "pcie.0" if profile.machine == "q35" else "pci.0"
    nic = f"{device},netdev=ucvm-net0,bus={bus},addr={NIC_SLOT:#x},mac={network.mac}"
    return ["-netdev", netdev, "-device", nic]
