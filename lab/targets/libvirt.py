"""KVM / QEMU through libvirt: one domain per instance, booted from the image as a hypervisor
boots it (firmware -> disk or CD), with the platform profile's virtual hardware.

The accelerator is decided by a probe boot, not by the presence of /dev/kvm: on some hosts a
KVM device exists but runs no normal guest. The result is cached per host boot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import libvirt
from filelock import FileLock

from lab.build import context as ctx
from lab.build.bootloader import KERNEL_CMDLINE, BootLoader
from lab.run import RUN_ID, Run, run_is_alive, sweep_files
from lab.runroot import make_dir
from lab.targets.base import CommandResult, Instance, Target, TargetError, WaitTimeout
from lab.targets.profiles import Profile

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
LAB_NS = "https://ucvm-lab.invalid/ns/instance/1"
MEMORY_MIB = 768
PROBE_BUDGET_S = 30
SCRATCH_MIN_GB = 0.25

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions
ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("ucvm", LAB_NS)


def connect(uri: str) -> libvirt.virConnect:
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as error:
        raise TargetError(
            f"cannot connect to libvirt at {uri}: {error.get_error_message()}"
        ) from error


def qemu_user() -> tuple[int, int] | None:
    """The account libvirt runs QEMU as (Debian's default), for files libvirt does not label."""
    try:
        account = pwd.getpwnam("libvirt-qemu")
    except KeyError:
        return None
    return account.pw_uid, account.pw_gid


# --- the domain -----------------------------------------------------------------------------


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


NIC_DEVICES = {"virtio": "virtio-net-pci"}  # libvirt model name -> QEMU device, where they differ
NIC_SLOT = 0x18  # clear of the slots libvirt assigns and of the passed-through disks (0x10+)
GUEST_FORWARD = "socat - TCP:127.0.0.1:{port}"
# The guest's user network is the link-local range clouds use, so the metadata service sits at
# 169.254.169.254 as on EC2, GCE and OpenStack (guestfwd accepts only addresses inside it).
GUEST_NET = "169.254.169.0/24"


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
    netdev = f"user,id=ucvm-net0,restrict=on,net={GUEST_NET}"  # the forwards, nothing else
    for guest, port in sorted(host_services.items()):
        netdev += f",guestfwd=tcp:{guest}-cmd:{GUEST_FORWARD.format(port=port)}"
    if network.ssh_port:
        netdev += f",hostfwd=tcp:127.0.0.1:{network.ssh_port}-:22"
    device = NIC_DEVICES.get(profile.nic_model, profile.nic_model)
    bus = "pcie.0" if profile.machine == "q35" else "pci.0"
    nic = f"{device},netdev=ucvm-net0,bus={bus},addr={NIC_SLOT:#x},mac={network.mac}"
    return ["-netdev", netdev, "-device", nic]


def free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- accelerator ----------------------------------------------------------------------------


def host_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def kvm_offered(conn: libvirt.virConnect) -> tuple[bool, str]:
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "kvm")
    except libvirt.libvirtError as error:
        return False, f"libvirt offers no KVM domains: {error.get_error_message()}"
    return True, ""


# An instance's disks, whether they go to QEMU directly, and its direct kernel boot (kernel,
# initrd, command line) or None, made in its work directory (see launch_disk()).
Prepare = Callable[[Path], tuple[list[tuple[Path, str, bool]], bool, tuple[Path, Path, str] | None]]


class LibvirtTarget(Target):
    """A libvirt host: qemu:///system by default, or any URI from the target's settings."""

    # uri_env is read by lab.matrix (the uri from an environment variable, or `unavailable`)
    SETTINGS = frozenset(("uri", "uri_env", "unavailable"))

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
        try:
            probe = self._define(
                image, domain_type="kvm", suffix="kvmprobe", profile=self.profile,
                kernel_args="ucvm.break=network",
            )  # fmt: skip
            with probe:
                probe.wait_for(r"ucvm: phase=start", PROBE_BUDGET_S)
        except TargetError as error:
            return "tcg", f"KVM probe boot failed ({error}); using software emulation"
        return "kvm", "KVM probe boot printed its first marker"

    # --- launching --------------------------------------------------------------------
    def launch(
        self,
        image: BootLoader,
        context: ctx.Context | None = None,
        profile: Profile | None = None,
        *,
        channel: str | None = None,
        image_format: str | None = None,
        kernel_args: str | None = None,
        boot_args: Sequence[str] = (),
        host_services: Mapping[str, int] | None = None,
        metadata_delay_s: float = 0,
    ) -> LibvirtInstance:
        """As Target.launch. With a ``context``, the instance gets the platform's channel
        (``channel``, by default the profile's first): its medium as a CD-ROM, or its metadata
        service at 169.254.169.254 (which the instance owns and stops), the platform's SMBIOS
        identity, and an SSH forward from the host's 127.0.0.1 (``instance.network.ssh_port``).
        ``metadata_delay_s`` slows every answer of the service (a fault test's slow cloud)."""
        profile = profile or self.profile
        delivery = ContextDelivery.plan(profile, context, channel) if context else None
        accel, why = self.accelerator(image)
        instance = self._define(
            image,
            domain_type="kvm" if accel == "kvm" else "qemu",
            profile=profile,
            image_format=image_format,
            kernel_args=kernel_args,
            boot_args=boot_args,
            host_services=host_services,
            delivery=delivery,
            metadata_delay_s=metadata_delay_s,
        )
        instance.accel, instance.accel_reason = accel, why
        return instance

    def launch_disk(
        self,
        disk: Path,
        disk_format: str,
        kernel: Path,
        initrd: Path,
        cmdline: str,
        *,
        boot_args: Sequence[str] = (),
        host_services: Mapping[str, int] | None = None,
    ) -> LibvirtInstance:
        """Boot a full-disk OS image (not the boot loader), the conventional baseline of
        bench/os_on_demand.py: as launch() does with the boot loader, a copy of ``disk`` with a
        copy-on-write layer on top (libvirt relabels a backing file and may leave it so: the
        original is never handed to it), as the profile's first disk, started by libvirt's
        direct kernel boot of ``kernel`` and ``initrd`` with exactly ``cmdline``. Same domain,
        names, console log and clean-up as launch(); the accelerator is the one launch() or
        accelerator() decided for this target (or matrix.yaml's setting): no probe is booted
        from a disk."""
        if self._accel is None and self.accel_setting not in ("kvm", "tcg"):
            raise TargetError(
                f"{self.name}: the accelerator is not decided yet; call accelerator(boot_loader) "
                "or launch() on this target first"
            )
        accel, why = self._accel or (self.accel_setting, "set by matrix.yaml / UCVM_ACCEL")
        profile = self.profile

        def prepare(
            workdir: Path,
        ) -> tuple[list[tuple[Path, str, bool]], bool, tuple[Path, Path, str]]:
            base, overlay = workdir / f"base-{disk.name}", workdir / "disk.qcow2"
            subprocess.run(["cp", "--sparse=always", str(disk), str(base)], check=True)
            qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", disk_format,
                     str(overlay))  # fmt: skip
            direct = (workdir / "vmlinuz", workdir / "initrd.img", cmdline)
            shutil.copy2(kernel, direct[0])  # libvirt relabels these too: copies, as launch()
            shutil.copy2(initrd, direct[1])
            disks = [(overlay, "qcow2", False)]
            passthrough = needs_passthrough(profile, {disk_format, "qcow2"})
            owner = qemu_user()
            if passthrough and owner:  # libvirt labels only the disks it manages
                for path in (base, overlay):
                    os.chown(path, *owner)
            return disks, passthrough, direct

        instance = self._define(
            None,  # type: ignore[arg-type]  # prepare() makes the disks, not the boot loader
            domain_type="kvm" if accel == "kvm" else "qemu",
            profile=profile,
            boot_args=boot_args,
            host_services=host_services,
            prepare=prepare,
        )
        instance.accel, instance.accel_reason = accel, why
        return instance

    def _define(
        self,
        image: BootLoader,
        *,
        domain_type: str,
        profile: Profile,
        suffix: str | None = None,
        image_format: str | None = None,
        kernel_args: str | None = None,
        boot_args: Sequence[str] = (),
        host_services: Mapping[str, int] | None = None,
        prepare: Prepare | None = None,
        delivery: ContextDelivery | None = None,
        metadata_delay_s: float = 0,
    ) -> LibvirtInstance:
        name = self.run.resource_name(self.name, suffix or secrets.token_hex(3))
        workdir = self.run.dir / name
        if not make_dir(workdir):  # 0711: QEMU (libvirt-qemu) traverses it, lists nothing
            raise TargetError(f"{workdir} exists already: instance names are unique per run")
        instance = LibvirtInstance(name, self, profile, workdir)
        try:  # whatever stops the start (an error, Ctrl-C), nothing of it may stay behind
            if delivery:
                host_services = delivery.deliver(instance, host_services, metadata_delay_s)
            self._start(
                instance,
                image,
                domain_type,
                image_format or profile.image_format,
                kernel_args,
                boot_args,
                host_services or {},
                prepare,
            )
        except BaseException as error:
            instance.destroy()
            if isinstance(error, libvirt.libvirtError):
                message = error.get_error_message()
                raise TargetError(f"{self.uri} could not start {name}: {message}") from error
            raise
        return instance

    def _start(
        self,
        instance: LibvirtInstance,
        image: BootLoader,
        domain_type: str,
        fmt: str,
        kernel_args: str | None,
        boot_args: Sequence[str],
        host_services: Mapping[str, int],
        prepare: Prepare | None = None,
    ) -> None:
        workdir, profile = instance.workdir, instance.profile
        if prepare is not None:  # launch_disk(): the caller's disk, kernel and command line
            disks, passthrough, direct = prepare(workdir)
        else:
            disks, passthrough = self._prepare_disks(image, profile, fmt, workdir)
            direct = None
            if kernel_args is not None:
                kernel, initrd = workdir / "vmlinuz", workdir / "initrd.img"
                shutil.copy2(image.vmlinuz, kernel)
                shutil.copy2(image.initrd, initrd)
                direct = (kernel, initrd, f"{KERNEL_CMDLINE} {kernel_args}".strip())
        xml = domain_xml(
            name=instance.name,
            domain_type=domain_type,
            profile=profile,
            disks=disks,
            console_log=workdir / "console.log",
            channel=workdir / "channel.sock",
            run=self.run,
            target=self.name,
            passthrough=passthrough,
            direct_boot=direct,
            uuid=instance.uuid,
            boot_args=channel_boot_args(boot_args, instance.channel_key),
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

    def _prepare_disks(
        self, image: BootLoader, profile: Profile, fmt: str, workdir: Path
    ) -> tuple[list[tuple[Path, str, bool]], bool]:
        """The instance's own disks: a copy of the image plus a copy-on-write layer on top
        that the platform has grown by scratch_gb (clouds hand out disks larger than the image);
        or, booting from ISO, the ISO and a blank disk for scratch."""
        source, qemu_format = image.disk_for_qemu(fmt)
        base = workdir / f"base-{source.name}"
        subprocess.run(["cp", "--sparse=always", str(source), str(base)], check=True)
        scratch_bytes = int(max(self.scratch_gb, SCRATCH_MIN_GB) * (1 << 30))
        if fmt == "iso":
            blank = workdir / f"scratch.{profile.scratch_format}"
            qemu_img("create", "-q", "-f", profile.scratch_format, str(blank), str(scratch_bytes))
            disks = [(base, "raw", True), (blank, profile.scratch_format, False)]
        else:
            overlay = workdir / "disk.qcow2"
            size = base_virtual_size(base, qemu_format) + scratch_bytes
            qemu_img(
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(base),
                "-F",
                qemu_format,
                str(overlay),
                str(size),
            )
            disks = [(overlay, "qcow2", False)]
        passthrough = needs_passthrough(profile, {qemu_format} | {f for _, f, _ in disks})
        owner = qemu_user()
        if passthrough and owner:  # libvirt labels only the disks it manages
            for path in [base, *(p for p, _, _ in disks)]:
                os.chown(path, *owner)
        return disks, passthrough


def make_private(workdir: Path) -> None:
    """Files of an instance 0600, its directories 0711: libvirt hands the disks, kernel and
    media it manages to libvirt-qemu (and back), the passthrough disks are chowned to it, and
    libvirt or virtlogd open the console log and the channel socket as root."""
    for path in workdir.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(0o711 if path.is_dir() else 0o600)


def lab_metadata(domain: libvirt.virDomain) -> dict[str, str]:
    """The lab's attributes on a domain (run, root, target, profile); empty if not the lab's."""
    try:
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, LAB_NS)
    except libvirt.libvirtError:
        return {}
    return dict(ET.fromstring(text).attrib)


def sweep(uri: str, run_root: Path) -> list[str]:
    """Remove what no live run owns, among resources of runs under ``run_root``: domains of
    dead runs, domains whose instance directory is gone (destroyed while libvirtd was away),
    then dead runs' files. Domains of runs under another root are left alone."""
    removed = []
    for domain in connect(uri).listAllDomains():
        metadata = lab_metadata(domain)
        if metadata.get("root") != str(run_root) or not RUN_ID.fullmatch(metadata.get("run", "")):
            continue
        run_dir = run_root / metadata["run"]
        if not run_is_alive(run_dir) or not (run_dir / domain.name()).exists():
            undefine(domain)
            removed.append(f"domain {domain.name()}")
    return removed + sweep_files(run_root)  # "files DIR" and "left alone: PATH: why" lines


def qemu_img(*args: str) -> None:
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise TargetError(f"qemu-img {' '.join(args)}: {result.stderr.strip()}")


def base_virtual_size(path: Path, fmt: str) -> int:
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", "-f", fmt, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(json.loads(info.stdout)["virtual-size"])


def read_qemu_pid(name: str) -> int | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    return None


def undefine(domain: libvirt.virDomain) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        if domain.isActive():
            domain.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)


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
        instance.network = GuestNetwork(ssh_port=free_local_port())
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
        service = ctx.MetadataService(
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


class LibvirtInstance(Instance):
    def __init__(self, name: str, target: LibvirtTarget, profile: Profile, workdir: Path) -> None:
        super().__init__(name, target, profile, workdir)
        self.domain: libvirt.virDomain | None = None
        self.qemu_pid: int | None = None
        self.network = GuestNetwork()
        self.smbios: dict[str, dict[str, str]] = {}
        self.context_medium: Path | None = None
        self.metadata: ctx.MetadataService | None = None  # the channel's service, if it has one
        self._channel: socket.socket | None = None
        # The console channel's key, an SMBIOS OEM string only this instance gets: the guest
        # evaluates nothing on the channel before a line that is the key (os-on-demand.md)
        self.channel_key = secrets.token_hex(32)
        self._destroyed = False

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    def console(self) -> str:
        try:
            return self.console_log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def disk_read_bytes(self) -> int:
        """Bytes the guest has read from its disks so far (libvirt's block stats, rd_bytes,
        summed over the domain's disks; disks passed straight to QEMU are not counted)."""
        if self.domain is None:
            raise TargetError(f"{self.name} is not running")
        try:
            devices = ET.fromstring(self.domain.XMLDesc(0)).iterfind("devices/disk/target")
            return sum(self.domain.blockStats(t.get("dev"))[1] for t in devices)
        except libvirt.libvirtError as error:
            raise TargetError(f"block stats of {self.name}: {error.get_error_message()}") from error

    def is_running(self) -> bool:
        if self.domain is None:
            return False
        try:
            return bool(self.domain.isActive())
        except libvirt.libvirtError as error:
            raise TargetError(f"libvirt lost {self.name}: {error.get_error_message()}") from error

    def run(self, command: str, timeout: float = 60) -> CommandResult:
        """Run a shell command in the guest over the second serial port (a shell /init starts
        once the boot ends), the channel's key first: a guest shell that has not seen it yet
        (a new boot, a restarted shell) starts evaluating after it, one that has skips it."""
        nonce = os.urandom(4).hex()
        end = re.compile(rf"__UCVM_RC_{nonce}=(\d+)")
        encoded = base64.b64encode(command.encode()).decode()
        channel = self._send(f'eval "$(echo {encoded} | base64 -d)"; echo __UCVM_RC_{nonce}=$?')
        received = b""
        deadline = time.monotonic() + timeout
        while not (match := end.search(received.decode("utf-8", "replace"))):
            if time.monotonic() > deadline:
                raise WaitTimeout(f"{command!r} did not finish in {timeout:g} s on {self.name}")
            channel.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                chunk = channel.recv(65536)
                if not chunk:
                    raise TargetError(f"the console channel of {self.name} closed")
                received += chunk
        output = received.decode("utf-8", "replace")[: match.start()]
        return CommandResult(command, int(match.group(1)), output)

    def ssh(self, user: str, key: Path, command: str, timeout: float = 60) -> CommandResult:
        """Run ``command`` as ``user`` over SSH, logging in with the private ``key`` through
        the instance's forward on the host's 127.0.0.1 (a context launch has one)."""
        if not self.network.ssh_port:
            raise TargetError(f"{self.name} was launched without a context: no SSH forward")
        options = {
            "BatchMode": "yes",  # a refused key fails; it never falls back to a password
            "IdentitiesOnly": "yes",
            "StrictHostKeyChecking": "no",  # the guest made its host keys at this boot
            "UserKnownHostsFile": "/dev/null",
            "ConnectTimeout": "10",
            "LogLevel": "ERROR",
        }
        args = ["ssh", "-i", str(key), "-p", str(self.network.ssh_port)]
        for name, value in options.items():
            args += ["-o", f"{name}={value}"]
        try:
            done = subprocess.run(
                [*args, f"{user}@127.0.0.1", command],
                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired as error:
            raise WaitTimeout(
                f"ssh {user}@{self.name} {command!r}: no end in {timeout:g} s"
            ) from error
        return CommandResult(command, done.returncode, done.stdout + done.stderr)

    def _send(self, line: str) -> socket.socket:
        """One line for the guest's channel, the key before it (see run())."""
        channel = self._open_channel()
        channel.sendall(f"{self.channel_key}\n{line}\n".encode())
        return channel

    def _open_channel(self) -> socket.socket:
        if self._channel is None:
            channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            channel.connect(str(self.workdir / "channel.sock"))
            self._channel = channel
        return self._channel

    def reboot(self) -> None:
        """Reboot as a hypervisor's reboot does: the guest syncs and restarts (through the
        console channel); a guest without a channel gets a hard reset instead."""
        if self.domain is None:
            raise TargetError(f"{self.name} is not running")
        self.mark_new_boot()
        try:
            self._send("sync; reboot -f")
        except OSError:  # no channel: the guest never got that far, so press reset
            self._reset()

    def _reset(self) -> None:
        if self.domain is None:
            raise TargetError(f"{self.name} is not running")
        try:
            self.domain.reset(0)
        except libvirt.libvirtError as error:
            raise TargetError(
                f"reset of {self.name} failed: {error.get_error_message()}"
            ) from error

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        if self._channel:
            self._channel.close()
        try:
            if self.domain is not None:
                undefine(self.domain)  # first: its end closes the service's connections
                self.domain = None
        finally:
            try:
                if self.metadata:
                    self.metadata.stop()
            finally:
                self._kill_orphan_qemu()
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill_orphan_qemu(self) -> None:
        """If libvirtd died, its QEMU lives on: kill it so nothing outlives the run."""
        if self.qemu_pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError, FileNotFoundError):
            cmdline = Path(f"/proc/{self.qemu_pid}/cmdline").read_bytes()
            if self.name.encode() in cmdline:
                os.kill(self.qemu_pid, signal.SIGKILL)
