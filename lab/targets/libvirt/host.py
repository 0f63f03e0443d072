"""The libvirt host: the connection, its accounts and capabilities, the sweeper.

Everything here talks to the local libvirtd or reads the host (/proc, /run/libvirt); the
domain's own description is lab.targets.libvirt.domain.
"""

from __future__ import annotations

import contextlib
import pwd
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from lab.run import RUN_ID, run_is_alive, sweep_files
from lab.targets.base import InfrastructureError
from lab.targets.libvirt.domain import LAB_NS

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions


def connect(uri: str) -> libvirt.virConnect:
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as error:
        raise InfrastructureError(
            f"cannot connect to libvirt at {uri}: {error.get_error_message()}"
        ) from error


def qemu_user() -> tuple[int, int] | None:
    """The account libvirt runs QEMU as (Debian's default), for files libvirt does not label."""
    try:
        account = pwd.getpwnam("libvirt-qemu")
    except KeyError:
        return None
    return account.pw_uid, account.pw_gid


def host_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def kvm_offered(conn: libvirt.virConnect) -> tuple[bool, str]:
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "kvm")
    except libvirt.libvirtError as error:
        return False, f"libvirt offers no KVM domains: {error.get_error_message()}"
    return True, ""


def lab_metadata(domain: libvirt.virDomain) -> dict[str, str]:
    """The lab's attributes on a domain (run, root, target, profile); empty if not the lab's."""
    try:
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, LAB_NS)
    except libvirt.libvirtError:
        return {}
    return dict(ET.fromstring(text).attrib)


def sweep(uri: str, run_root: Path, only: str | None = None) -> list[str]:
    """Remove what no live run owns, among resources of runs under ``run_root`` (``only``:
    of the run of that id alone): domains of dead runs, domains whose instance directory is
    gone (destroyed while libvirtd was away), then dead runs' files. Domains of runs under
    another root are left alone."""
    removed = []
    for domain in connect(uri).listAllDomains():
        metadata = lab_metadata(domain)
        if metadata.get("root") != str(run_root) or not RUN_ID.fullmatch(metadata.get("run", "")):
            continue
        if only is not None and metadata["run"] != only:
            continue
        run_dir = run_root / metadata["run"]
        if not run_is_alive(run_dir) or not (run_dir / domain.name()).exists():
            undefine(domain)
            removed.append(f"domain {domain.name()}")
    return removed + sweep_files(run_root, only)  # "files DIR", "left alone: PATH: why"


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
