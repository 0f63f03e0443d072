"""The libvirt target: one host (qemu:///system by default), its accelerator, its launches.

Each launch is one domain, booted from the image as a hypervisor boots it (firmware -> disk
or CD), with the platform profile's virtual hardware (lab.targets.libvirt.domain). The
accelerator is decided by a probe boot, not by the presence of /dev/kvm: on some hosts a KVM
device exists but runs no normal guest. The result is cached per host boot.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import libvirt
from filelock import FileLock

from lab.build.bootloader import BootLoader
from lab.run import Run
from lab.targets.base import InfrastructureError, LaunchRequest, Target, TargetError
from lab.targets.libvirt.delivery import UNDELIVERABLE, ContextDelivery
from lab.targets.libvirt.disks import Media, boot_loader_media, make_private
from lab.targets.libvirt.domain import channel_boot_args, domain_xml
from lab.targets.libvirt.host import connect, host_boot_id, kvm_offered, read_qemu_pid
from lab.targets.libvirt.instance import LibvirtInstance
from lab.targets.profiles import Profile

PROBE_BUDGET_S = 30
PROBE_ARGS = "ucvm.break=network"  # the probe boots to its first marker and no further


class LibvirtTarget(Target[LibvirtInstance]):
    """A libvirt host: qemu:///system by default, or any URI from the target's settings.
    It can do every launch option (REFUSALS is empty); a context's channel is checked
    against the profile when the launch is asked for (ContextDelivery.plan)."""

    # uri_env is read by lab.matrix (the uri from an environment variable, or `unavailable`)
    SETTINGS = frozenset(("uri", "uri_env", "unavailable"))
    REFUSALS: ClassVar[Mapping[str, str]] = {}
    LOCAL_WORKDIR = True

    def __init__(
        self,
        name: str,
        profile: Profile,
        settings: dict[str, str],
        run: Run,
        *,
        default_uri: str = "qemu:///system",
        accel: str = "auto",
        scratch_gb: float = 1.0,
    ) -> None:
        super().__init__(name, profile, settings, run)
        self.uri = settings.get("uri", default_uri)
        self.accel_setting = accel
        self.scratch_gb = scratch_gb
        self._conn: libvirt.virConnect | None = None
        self._accel: tuple[str, str] | None = None

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None or not self._conn.isAlive():
            self._conn = connect(self.uri)
        return self._conn

    def available(self) -> tuple[bool, str]:
        if self.profile.not_emulated:
            return False, self.profile.not_emulated
        if "unavailable" in self.settings:
            return False, self.settings["unavailable"]
        if not self.uri.startswith("qemu"):
            return False, f"the lab builds QEMU domains only; {self.uri} is not a QEMU host"
        if urlparse(self.uri).hostname:
            return False, (
                f"{self.uri} is a remote host: the driver hands QEMU local files (disks, "
                "console log), so remote hosts need volume upload first (not built yet)"
            )
        conn = self.conn  # the local libvirtd not answering is a fault: TargetError, not a skip
        try:
            conn.getDomainCapabilities(None, "x86_64", self.profile.machine, "qemu")
        except libvirt.libvirtError as error:
            return (
                False,
                f"{self.uri} cannot run machine {self.profile.machine}: "
                f"{error.get_error_message()}",
            )
        return True, f"libvirt {self.uri}"

    def offers_channel(self, channel: str) -> tuple[bool, str]:
        if channel in UNDELIVERABLE:
            return False, UNDELIVERABLE[channel]
        return super().offers_channel(channel)

    # --- accelerator ------------------------------------------------------------------
    def accelerator(self, image: BootLoader) -> tuple[str, str]:
        """('kvm' | 'tcg', why), decided once per target object and cached per host boot."""
        if self._accel is None:
            self._accel = self._decide_accel(image)
        return self._accel

    def _decide_accel(self, image: BootLoader) -> tuple[str, str]:
        if self.accel_setting in ("kvm", "tcg"):
            return self.accel_setting, "set by matrix.yaml / UCVM_ACCEL"
        offered, why = kvm_offered(self.conn)
        if not offered:
            return "tcg", why
        cache = self.run.root / f".accel-{re.sub(r'[^a-z0-9]+', '_', self.uri)}.json"
        key = {"boot_id": host_boot_id(), "kernel": image.kernel_release}
        with FileLock(f"{cache}.lock"):  # xdist workers: one probe per host boot
            with contextlib.suppress(FileNotFoundError, ValueError):
                cached = json.loads(cache.read_text())
                if cached.get("key") == key:
                    return cached["accel"], cached["why"] + " (cached probe)"
            accel, why = self._probe_kvm(image)
            cache.write_text(json.dumps({"key": key, "accel": accel, "why": why}))
        return accel, why

    def _probe_kvm(self, image: BootLoader) -> tuple[str, str]:
        """A direct kernel boot as a KVM domain: KVM works if the guest prints its first marker."""
        profile = self.profile
        request = LaunchRequest(
            image, profile.image_format, profile, self.run.id,
            kernel_args=PROBE_ARGS, accel="kvm", suffix="kvmprobe",
        )  # fmt: skip
        try:
            probe = self.launch_request(request)
            try:
                probe.wait_for(r"ucvm: phase=start", PROBE_BUDGET_S)
            finally:
                probe.destroy()  # now: a probe is no cell's, whatever --keep-failed holds
        except TargetError as error:
            return "tcg", f"KVM probe boot failed ({error}); using software emulation"
        return "kvm", "KVM probe boot printed its first marker"

    # --- launching ----------------------------------------------------------------------
    def _check(self, request: LaunchRequest) -> None:
        """With a ``context``, the instance gets the platform's channel (``channel``, by
        default the profile's first): its medium as a CD-ROM, or its metadata service at
        169.254.169.254 (which the instance owns and stops), the platform's SMBIOS identity,
        and an SSH forward from the host's 127.0.0.1 (``instance.network.ssh_port``)."""
        if request.context:
            ContextDelivery.plan(request.profile, request.context, request.channel)

    def _new_instance(self, name: str, profile: Profile, workdir: Path) -> LibvirtInstance:
        return LibvirtInstance(name, self, profile, workdir)

    def _start(self, instance: LibvirtInstance, request: LaunchRequest) -> None:
        if request.accel:  # the probe: asked for, not decided
            instance.accel, instance.accel_reason = request.accel, "asked for (the probe boot)"
        else:
            instance.accel, instance.accel_reason = self.accelerator(request.image)
        host_services = dict(request.host_services)
        if request.context:
            delivery = ContextDelivery.plan(request.profile, request.context, request.channel)
            host_services = delivery.deliver(instance, host_services, request.metadata_delay_s)
        media = self._media(instance, request)
        workdir = instance.workdir
        xml = domain_xml(
            name=instance.name,
            domain_type="kvm" if instance.accel == "kvm" else "qemu",
            profile=instance.profile,
            disks=media.disks,
            console_log=instance.console_log,
            channel=workdir / "channel.sock",
            run=self.run,
            target=self.name,
            passthrough=media.passthrough,
            direct_boot=media.direct_boot,
            uuid=instance.uuid,
            boot_args=channel_boot_args(request.boot_args, instance.channel_key),
            host_services=host_services,
            network=instance.network,
            smbios=instance.smbios,
            context_medium=instance.context_medium,
        )
        # for whoever debugs the run, without the channel's key
        (workdir / "domain.xml").write_text(xml.replace(instance.channel_key, "(channel key)"))
        make_private(workdir)
        instance.domain = self.conn.defineXML(xml)
        instance.timeline.launched_at = time.monotonic()
        instance.domain.create()
        instance.qemu_pid = read_qemu_pid(instance.name)

    def _media(self, instance: LibvirtInstance, request: LaunchRequest) -> Media:
        """What the instance boots from, made in its work directory: the boot loader's image
        in the request's format (a subclass may boot something else: bench/full_disk.py)."""
        return boot_loader_media(
            request.image,
            instance.profile,
            request.image_format,
            instance.workdir,
            scratch_gb=self.scratch_gb,
            kernel_args=request.kernel_args,
        )

    def _translate(self, error: BaseException, instance: LibvirtInstance) -> BaseException:
        if isinstance(error, libvirt.libvirtError):
            message = error.get_error_message()
            return InfrastructureError(f"{self.uri} could not start {instance.name}: {message}")
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return InfrastructureError(f"the host's disk is full: {error}")
        return error
