"""The OVA imported as vSphere clients import one, and what the lab reads from it.

OvfManager.CreateImportSpec from the OVA's OVF descriptor (optional hardware the server lacks
is dropped with a warning), ResourcePool.ImportVApp, then each file uploaded over HTTP to the
device URL of the HttpNfcLease, as govc sends it, with lease progress and
HttpNfcLeaseComplete. A failed import aborts the lease and destroys the VM it left.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlparse

from pyVmomi import vim, vmodl

from lab.targets.base import TargetError
from lab.targets.vmware.sweep import annotation
from lab.targets.vmware.vsphere import (
    TASK_BUDGET_S,
    Placement,
    describe_fault,
    destroy_vm,
    present,
    session_cookie,
    vsphere_call,
)

if TYPE_CHECKING:
    from lab.targets.vmware.target import VmwareTarget

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 1 << 20
PROGRESS_EVERY_S = 5  # vSphere drops a lease that reports no progress for minutes
OVF_NS = "{http://schemas.dmtf.org/ovf/envelope/1}"
RASD_NS = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"


@dataclass(frozen=True)
class OvfFacts:
    networks: tuple[str, ...]  # the descriptor's logical networks, to map onto ours
    optional_items: frozenset[str]  # InstanceIDs of hardware items marked ovf:required="false"


def read_ovf(descriptor: str) -> OvfFacts:
    root = ET.fromstring(descriptor)
    networks = tuple(
        n.get(f"{OVF_NS}name", "") for n in root.iter(f"{OVF_NS}Network") if n.get(f"{OVF_NS}name")
    )
    optional = frozenset(
        item.findtext(f"{RASD_NS}InstanceID", "")
        for item in root.iter(f"{OVF_NS}Item")
        if item.get(f"{OVF_NS}required") == "false"
    )
    return OvfFacts(networks, optional)


def descriptor_member(archive: tarfile.TarFile, ova: Path) -> tarfile.TarInfo:
    for member in archive.getmembers():
        if member.name.endswith(".ovf"):
            return member
    raise TargetError(f"{ova} holds no OVF descriptor (*.ovf)")


def member_stream(archive: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    stream = archive.extractfile(member)
    if stream is None:
        raise TargetError(f"{archive.name!s}: {member.name} is not a regular file")
    return stream


def member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    with member_stream(archive, member) as stream:
        return stream.read()


def ova_member(archive: tarfile.TarFile, path: str) -> tarfile.TarInfo:
    try:
        return archive.getmember(path)
    except KeyError:
        raise TargetError(
            f"{archive.name!s} lacks {path}, which its OVF descriptor names"
        ) from None


class OvaImport:
    """The import of one OVA into a target's placement: ``run()`` returns the new VM."""

    def __init__(self, target: VmwareTarget) -> None:
        self.target = target
        self.password = target.password
        self.run_of = target.run

    @property
    def service_instance(self) -> vim.ServiceInstance:
        return self.target.service_instance

    def run(self, ova: Path, name: str, where: Placement) -> vim.VirtualMachine:
        with tarfile.open(ova) as archive:
            descriptor = member_bytes(archive, descriptor_member(archive, ova)).decode()
            spec = self._import_spec(descriptor, name, where)
            import_spec = present(spec.importSpec, f"an import spec for {name}")
            with vsphere_call(f"ImportVApp of {name}", [self.password]):
                lease = where.pool.ImportVApp(import_spec, where.folder)  # type: ignore[call-arg]
            return self._upload(archive, spec.fileItem or [], lease, name)

    def _import_spec(
        self, descriptor: str, name: str, where: Placement
    ) -> vim.OvfManager.CreateImportSpecResult:
        facts = read_ovf(descriptor)
        params = vim.OvfManager.CreateImportSpecParams(
            entityName=name,
            networkMapping=[
                vim.OvfManager.NetworkMapping(name=n, network=where.network) for n in facts.networks
            ],
        )
        si = self.service_instance
        with vsphere_call(f"CreateImportSpec for {name}", [self.password]):
            ovf = present(si.RetrieveContent().ovfManager, "the server's OVF manager")
            result = ovf.CreateImportSpec(descriptor, where.pool, where.datastore, params)
        fatal = []
        for fault in result.error or ():
            problem = f"CreateImportSpec for {name}: {describe_fault(fault)}"
            if getattr(fault, "instanceId", None) in facts.optional_items:
                log.warning("%s (an optional item: imported without it)", problem)
            else:
                fatal.append(problem)
        for fault in result.warning or ():
            log.warning("CreateImportSpec for %s: %s", name, describe_fault(fault))
        if fatal:
            raise TargetError("; ".join(fatal))
        spec = present(result.importSpec, f"an import spec for {name}")
        assert isinstance(spec, vim.vm.VmImportSpec), spec  # one VM, not a vApp
        spec.configSpec.annotation = annotation(self.run_of)
        return result

    def _upload(
        self,
        archive: tarfile.TarFile,
        items: Sequence[vim.OvfManager.FileItem],
        lease: vim.HttpNfcLease,
        name: str,
    ) -> vim.VirtualMachine:
        vm: vim.VirtualMachine | None = None
        try:
            self._wait_for_lease(lease, name)
            with vsphere_call(f"the import lease of {name}", [self.password]):
                info = present(lease.info, f"the import lease of {name}")
                vm = present(info.entity, f"the VM of the import of {name}")  # type: ignore[assignment]
                urls = {d.importKey: d.url for d in info.deviceUrl}
            members = [ova_member(archive, item.path) for item in items]
            upload = LeaseUpload(self.target, lease, sum(m.size for m in members))
            for item, member in zip(items, members, strict=True):
                if item.deviceId not in urls:
                    raise TargetError(f"the import lease of {name} has no URL for {item.path}")
                upload.send(urls[item.deviceId], item, member_stream(archive, member), member.size)
            with vsphere_call(f"HttpNfcLeaseComplete of {name}", [self.password]):
                lease.HttpNfcLeaseProgress(100)
                lease.HttpNfcLeaseComplete()
        except BaseException:
            with contextlib.suppress(vmodl.MethodFault, OSError, http.client.HTTPException):
                lease.HttpNfcLeaseAbort()
            if vm is not None:  # vCenter removes an aborted import's VM; not every server does
                with contextlib.suppress(TargetError):
                    destroy_vm(vm, name)
            raise
        log.debug("imported %s", name)
        return present(vm, f"the VM of the import of {name}")

    def _wait_for_lease(self, lease: vim.HttpNfcLease, name: str) -> None:
        deadline = time.monotonic() + TASK_BUDGET_S
        with vsphere_call(f"the import lease of {name}", [self.password]):
            while lease.state == vim.HttpNfcLease.State.initializing:
                if time.monotonic() > deadline:
                    raise TargetError(f"the import lease of {name} stayed initializing")
                time.sleep(0.2)
            if lease.state != vim.HttpNfcLease.State.ready:
                raise TargetError(
                    f"the import lease of {name} is {lease.state}: "
                    + (describe_fault(lease.error) if lease.error else "no reason given")
                )


class LeaseUpload:
    """The files of an OVA sent to the device URLs of an import lease, as govc sends them,
    with the lease's progress reported as they go."""

    def __init__(self, target: VmwareTarget, lease: vim.HttpNfcLease, total: int) -> None:
        self.target = target
        self.lease = lease
        self.total = max(total, 1)
        self.sent = 0
        self.reported = time.monotonic()

    def send(self, url: str, item: vim.OvfManager.FileItem, stream: IO[bytes], size: int) -> None:
        host, port, _ = self.target.endpoint
        # A device URL names its host "*" when it is the server we are talking to.
        place = urlparse(url.replace("://*", f"://{host}:{port}", 1))
        what = f"upload of {item.path} to {place.hostname}"
        with vsphere_call(what, [self.target.password]):
            conn = self.target.https(place.hostname or host, place.port or 443)
            try:
                conn.putrequest("PUT" if item.create else "POST", place.path)
                for key, value in self._headers(item, size, place.hostname == host).items():
                    conn.putheader(key, value)
                conn.endheaders()
                while chunk := stream.read(UPLOAD_CHUNK):
                    conn.send(chunk)
                    self._progress(len(chunk))
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
        if not 200 <= response.status < 300:
            raise TargetError(f"{what}: HTTP {response.status} {response.reason}")

    def _headers(self, item: vim.OvfManager.FileItem, size: int, ours: bool) -> dict[str, str]:
        headers = {"Content-Length": str(size)}
        if item.create:
            headers["Overwrite"] = "t"
        else:
            headers["Content-Type"] = "application/x-vnd.vmware-streamVmdk"
        if ours:  # the session cookie goes to the server we logged in to, and no other
            headers["Cookie"] = session_cookie(self.target.service_instance)
        return headers

    def _progress(self, sent: int) -> None:
        self.sent += sent
        if time.monotonic() - self.reported > PROGRESS_EVERY_S:
            self.lease.HttpNfcLeaseProgress(min(99, self.sent * 100 // self.total))
            self.reported = time.monotonic()
