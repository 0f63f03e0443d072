"""The libvirt driver: KVM or QEMU on this host, one domain per instance.

What runs here: every profile QEMU can emulate, booted from the boot loader's image as the
platform's hypervisor boots it (firmware -> disk or CD), with the profile's virtual hardware,
its context channel imitated (a medium as a CD-ROM, a metadata service at 169.254.169.254)
and the host's services forwarded in. What only the real platform proves: the platform itself
(its hypervisor, its NIC and storage drivers where QEMU substitutes, its own metadata service);
a profile QEMU cannot emulate at all (Xen, Parallels) says why in its ``not_emulated``.

- ``target``: LibvirtTarget (the accelerator probe, the launch);
- ``instance``: LibvirtInstance (console, control channel, SSH, reboot, destroy);
- ``domain``: the domain XML, a pure function of the profile; ``network``: QEMU user
  networking; ``disks``: the instance's own files; ``delivery``: the context's channel;
- ``host``: the connection, the host's facts, the sweeper.
"""

from lab.targets.libvirt.host import sweep
from lab.targets.libvirt.instance import LibvirtInstance
from lab.targets.libvirt.target import LibvirtTarget

__all__ = ["LibvirtInstance", "LibvirtTarget", "sweep"]
