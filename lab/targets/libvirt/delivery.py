"""How a libvirt instance gets its context: the platform's channel, imitated under QEMU.

A medium channel (nocloud, config-drive, opennebula, ovf) becomes an ISO attached as a CD-ROM;
a service channel (ec2-imds, openstack-metadata, gce-metadata) a metadata service on the
host's 127.0.0.1 that the guest reaches at 169.254.169.254. Either way the guest also sees the
platform's SMBIOS identity, as cloud-init's ds-identify reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from lab.build import context as ctx
from lab.services.base import free_port
from lab.services.metadata import MetadataService
from lab.targets.base import TargetError
from lab.targets.libvirt.network import GuestNetwork
from lab.targets.profiles import Profile

if TYPE_CHECKING:
    from lab.targets.libvirt.instance import LibvirtInstance


class ContextDelivery:
    """How one instance gets its context: the channel, and what the platform shows the guest."""

    def __init__(self, channel: str, context: ctx.Context) -> None:
        self.channel = channel
        self.context = context

    @classmethod
    def plan(cls, profile: Profile, context: ctx.Context, channel: str | None) -> ContextDelivery:
        chosen = channel or (profile.channels[0] if profile.channels else None)
        if chosen in UNDELIVERABLE:
            raise TargetError(UNDELIVERABLE[chosen])
        if chosen is None or chosen not in profile.channels:
            offered = ", ".join(profile.channels) or "none"
            raise TargetError(
                f"the {profile.name} profile offers no channel {chosen!r}; it offers: {offered}"
            )
        ctx.check_user_data_size(profile.platform, context.user_data, f"{chosen} user-data")
        return cls(chosen, context)

    def deliver(
        self, instance: LibvirtInstance, host_services: Mapping[str, int] | None, delay_s: float
    ) -> dict[str, int]:
        """Make the medium or start the service; returns the host services with the
        metadata service's forward added."""
        services = dict(host_services or {})
        instance.network = GuestNetwork(ssh_port=free_port())
        if "system.uuid" in ctx.SMBIOS_IDENTITY.get(self.channel, {}):
            instance.uuid = ctx.ec2_domain_uuid(instance.uuid)  # EC2's UUIDs begin with ec2
        for key, value in ctx.smbios_sysinfo(self.channel, instance.uuid).items():
            section, entry = key.split(".", 1)
            instance.smbios.setdefault(section, {})[entry] = value
        if ctx.channel_info(self.channel).kind == "medium":
            instance.context_medium = ctx.build_medium(
                self.channel, self.context, instance.workdir, mac=instance.network.mac
            )
            return services
        service = MetadataService(
            self.channel, self.context, mac=instance.network.mac, delay_s=delay_s
        )
        instance.metadata = service.start()
        services[METADATA_ADDRESS] = service.port
        return services


METADATA_ADDRESS = "169.254.169.254:80"
# Channels of a platform that QEMU has no device for.
UNDELIVERABLE = {
    "guestinfo": "guestinfo travels over VMware's backdoor RPC (VMware Tools), which QEMU does "
    "not implement; under QEMU the vmware profile is contextualized by its OVF ISO transport. "
    "The VMware driver sets guestinfo on vSphere (checked against govmomi's simulator)",
}
