"""VMware vSphere (vCenter or ESXi) through pyvmomi: the appliance's OVA imported as a user
imports it, contextualized through guestinfo, powered on, destroyed.

The import is the one vSphere clients make: OvfManager.CreateImportSpec from the OVA's OVF
descriptor, ResourcePool.ImportVApp, then the disk uploaded over HTTP to the device URL of
the HttpNfcLease, with lease progress and HttpNfcLeaseComplete. The user-data reaches the
guest the way cloud-init's VMware datasource reads it: ``guestinfo.metadata`` and
``guestinfo.userdata`` (base64, with their ``.encoding`` keys) in the VM's extraConfig. Boot
options (``ucvm.version=1.1``) are refused: the boot loader reads them from SMBIOS OEM
strings, which vSphere does not set per VM, and it does not read guestinfo (no VMware Tools
in the initramfs); the user-data's ``[ucernvm-begin]`` block selects the version instead.

Every VM is named ``ucvm-<run id>-...`` and its annotation names the run and its run root
(and a custom field the run, where the server has custom fields), so ``sweep_vmware`` can
remove what a dead run left. Every vSphere fault becomes a TargetError naming the call and
what vSphere said; the password never appears in one, nor in a log line or a repr.

Settings (matrix.yaml ``settings:``): ``url_env`` (the environment variable holding the SDK
URL, default UCVM_VSPHERE_URL), ``datacenter``, ``datastore``, ``resource_pool``,
``network`` (names; default: the first found), ``ca_file`` (a PEM bundle to verify the
server with), ``insecure_tls: "true"`` (no certificate checks: only for a simulator's
self-signed certificate) and ``unavailable`` (a reason not to run, as for every driver). The
login comes from UCVM_VSPHERE_USER and UCVM_VSPHERE_PASSWORD.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import re
import secrets
import socket
import ssl
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote, urlencode, urlparse

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl
from pyVmomi.VmomiSupport import ManagedObject

from lab.build.bootloader import BootLoader
from lab.build.context import Context
from lab.run import PREFIX, Run, run_is_alive
from lab.targets.base import REAL_CONTEXT_RUN, Instance, Target, TargetError
from lab.targets.credentials import Secret, redact
from lab.targets.profiles import Profile

log = logging.getLogger(__name__)

DEFAULT_URL_ENV = "UCVM_VSPHERE_URL"
USER_ENV = "UCVM_VSPHERE_USER"
PASSWORD_ENV = "UCVM_VSPHERE_PASSWORD"
GUESTINFO = "guestinfo"  # the context channel: extraConfig keys the guest reads
RUN_FIELD = "ucvm-run"  # the custom field carrying the run id
CONSOLE_FILE = "ucvm-console.log"  # the serial port's file, in the VM's datastore folder
TASK_BUDGET_S = 600
HTTP_TIMEOUT_S = 60
UPLOAD_CHUNK = 1 << 20
PROGRESS_EVERY_S = 5  # vSphere drops a lease that reports no progress for minutes
OVF_NS = "{http://schemas.dmtf.org/ovf/envelope/1}"
RASD_NS = "{http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData}"
SETTINGS = frozenset(
    ("url_env", "datacenter", "datastore", "resource_pool", "network", "ca_file", "insecure_tls",
     "unavailable")
)  # fmt: skip
T = TypeVar("T")
VM_NAME = re.compile(rf"^{re.escape(PREFIX)}([^-]+)-")


# --- faults -----------------------------------------------------------------------------


def describe_fault(fault: vmodl.MethodFault) -> str:
    """``Kind: message (detail=value, ...)`` from a vSphere fault, whose ``msg`` is often empty."""
    kind = type(fault).__name__.rsplit(".", 1)[-1]
    message = getattr(fault, "msg", None) or "; ".join(
        m.message for m in fault.faultMessage or () if m.message
    )
    details = [f"{name}={value}" for name, value in fault_details(fault)]
    return ": ".join(filter(None, (kind, message))) + (
        f" ({', '.join(details)})" if details else ""
    )


def fault_details(fault: vmodl.MethodFault) -> Iterator[tuple[str, str]]:
    """The fault's own properties that say what it is about (a name, a file, an object)."""
    for prop in fault._GetPropertyList():
        value = getattr(fault, prop.name, None)
        if prop.name in ("msg", "faultMessage", "faultCause") or isinstance(value, bool):
            continue
        if isinstance(value, ManagedObject):
            yield prop.name, f"{value._wsdlName}:{value._moId}"
        elif isinstance(value, str | int) and value != "":
            yield prop.name, str(value)


@contextlib.contextmanager
def vsphere_call(what: str, hide: Sequence[Secret | None] = ()) -> Iterator[None]:
    """Turn what vSphere (or the network to it) raises during ``what`` into a TargetError."""
    try:
        yield
    except vmodl.MethodFault as fault:
        raise TargetError(redact(f"{what}: vSphere said {describe_fault(fault)}", hide)) from fault
    except (OSError, http.client.HTTPException) as error:
        raise TargetError(redact(f"{what}: {type(error).__name__}: {error}", hide)) from error


def run_task(what: str, start: Callable[[], vim.Task], budget_s: float = TASK_BUDGET_S) -> Any:
    """Start a task, wait for its end; its fault (as the TargetError's cause) if it fails."""
    deadline = time.monotonic() + budget_s
    with vsphere_call(what):
        task = start()
        while task.info.state in (vim.TaskInfo.State.queued, vim.TaskInfo.State.running):
            if time.monotonic() > deadline:
                raise TargetError(f"{what}: the task did not end within {budget_s:g} s")
            time.sleep(0.2)
        if task.info.state == vim.TaskInfo.State.error:
            fault = task.info.error
            said = describe_fault(fault) if fault else "the task failed without a fault"
            raise TargetError(f"{what}: vSphere said {said}") from fault
        return task.info.result


def gone(error: TargetError) -> bool:
    """Whether the object a call was about no longer exists."""
    return isinstance(error.__cause__, vmodl.fault.ManagedObjectNotFound)


# --- inventory --------------------------------------------------------------------------


def inventory(si: vim.ServiceInstance, kind: type, container: Any = None) -> list[Any]:
    """Every managed object of ``kind`` under ``container`` (default: the whole inventory)."""
    content = si.RetrieveContent()
    views = present(content.viewManager, "the server's view manager")
    view = views.CreateContainerView(container or content.rootFolder, [kind], True)
    try:
        return list(view.view)
    finally:
        view.DestroyView()


def present(value: T | None, what: str) -> T:
    """``value``; a vSphere property the server left unset is an error that says which."""
    if value is None:
        raise TargetError(f"vSphere did not give {what}")
    return value


def pick(found: Sequence[Any], name: str | None, what: str, where: str) -> Any:
    """The object called ``name`` among ``found``, else (no name given) the first one."""
    if not found:
        raise TargetError(f"{where} has no {what}")
    if name is None:
        return found[0]
    for candidate in found:
        if candidate.name == name:
            return candidate
    have = ", ".join(sorted({c.name for c in found}))
    raise TargetError(f"{where} has no {what} named {name!r}; it has: {have}")


@dataclass(frozen=True)
class Placement:
    datacenter: vim.Datacenter
    datastore: vim.Datastore
    pool: vim.ResourcePool
    network: vim.Network
    folder: vim.Folder


def datastore_folder(vm_path_name: str) -> tuple[str, str]:
    """``[LocalDS_0] name/name.vmx`` -> (``LocalDS_0``, ``name``)."""
    match = re.fullmatch(r"\[([^\]]+)\] ?(.*)", vm_path_name)
    if not match:
        raise TargetError(f"unexpected VM path {vm_path_name!r}")
    return match.group(1), match.group(2).rsplit("/", 1)[0]


def power_state(vm: vim.VirtualMachine, name: str) -> str | None:
    """The VM's power state; None once it is gone."""
    try:
        with vsphere_call(f"the power state of {name}"):
            return vm.runtime.powerState
    except TargetError as error:
        if gone(error):
            return None
        raise


def destroy_vm(vm: vim.VirtualMachine, name: str) -> None:
    """Power off (if on), Destroy_Task, wait. A VM that is already gone is fine."""
    state = power_state(vm, name)
    if state is None:
        return
    if state != vim.VirtualMachine.PowerState.poweredOff:
        with contextlib.suppress(TargetError):  # it may have stopped by itself meanwhile
            run_task(f"PowerOffVM_Task of {name}", vm.PowerOffVM_Task)
    try:
        run_task(f"Destroy_Task of {name}", vm.Destroy_Task)
    except TargetError as error:
        if not gone(error):
            raise


def session_cookie(si: vim.ServiceInstance) -> str:
    """The SOAP session's cookie, which the server's HTTP file interfaces also take (pyvmomi
    keeps it on its stub: the samples that upload to a lease read it there too)."""
    return si._stub.cookie


def run_root_label(run_root: Path) -> str:
    """Which lab owns a VM: this host and run root (one vCenter may serve several labs)."""
    return f"{socket.gethostname()}:{run_root}"


def annotation(run: Run) -> str:
    return f"ucvm-lab run: {run.id}\nrun root: {run_root_label(run.root)}\n"


def sweep_vmware(service_instance: vim.ServiceInstance, run_root: Path) -> list[str]:
    """Destroy the VMs named ``ucvm-<run id>-...`` whose run directory ``run_root/<run id>``
    is not alive. Only VMs whose annotation names this host's ``run_root`` are touched: those
    of other labs sharing the vCenter are theirs to sweep."""
    removed = []
    owner = f"run root: {run_root_label(run_root)}\n"
    with vsphere_call("listing the VMs to sweep"):
        for vm in inventory(service_instance, vim.VirtualMachine):
            with contextlib.suppress(vmodl.fault.ManagedObjectNotFound):  # gone meanwhile
                name, note = vm.name, (vm.config.annotation if vm.config else "") or ""
                match = VM_NAME.match(name)
                if match and owner in note and not run_is_alive(run_root / match.group(1)):
                    destroy_vm(vm, name)
                    removed.append(f"vm {name}")
    return removed


def run_field(manager: vim.CustomFieldsManager) -> vim.CustomFieldsManager.FieldDef:
    for field in manager.field or ():
        if field.name == RUN_FIELD and field.managedObjectType in (None, vim.VirtualMachine):
            return field
    return manager.AddCustomFieldDef(name=RUN_FIELD, moType=vim.VirtualMachine)


# --- guestinfo ----------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def guestinfo(context: Context | None) -> dict[str, str]:
    """extraConfig keys as cloud-init's VMware datasource reads them."""
    keys: dict[str, str] = {}
    if context is not None:
        metadata = {
            "instance-id": context.instance_id,
            "local-hostname": context.hostname,
            "public-keys": list(context.ssh_public_keys),
        }
        keys["guestinfo.metadata"] = b64(json.dumps(metadata).encode())
        keys["guestinfo.metadata.encoding"] = "base64"
        keys["guestinfo.userdata"] = b64(context.user_data)
        keys["guestinfo.userdata.encoding"] = "base64"
    return keys


# --- the OVA ----------------------------------------------------------------------------


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


# --- the target ---------------------------------------------------------------------------


class VmwareTarget(Target):
    """A vCenter or ESXi host, reached with the login in the environment.

    ``close()`` logs out; a target that is not closed leaves its session to expire."""

    SETTINGS = SETTINGS  # the module's list, also checked by available()

    def __init__(self, name: str, profile: Profile, settings: dict[str, str], run: Run) -> None:
        super().__init__(name, profile, settings, run)
        self.url_env = settings.get("url_env", DEFAULT_URL_ENV)
        self.url = os.environ.get(self.url_env, "")
        self.user = os.environ.get(USER_ENV, "")
        self.password = Secret(os.environ.get(PASSWORD_ENV, ""))
        self.insecure_tls = settings.get("insecure_tls", "false").lower() == "true"
        self._si: vim.ServiceInstance | None = None

    def __repr__(self) -> str:
        return f"VmwareTarget({self.name!r}, url={self.url!r}, user={self.user!r})"

    __str__ = __repr__

    # --- the connection -----------------------------------------------------------------
    @property
    def endpoint(self) -> tuple[str, int, str]:
        """(host, port, SDK path) of the URL, which must carry no login of its own."""
        parsed = urlparse(self.url if "://" in self.url else f"https://{self.url}")
        if parsed.username or parsed.password:
            raise TargetError(
                f"{self.url_env} must not carry a login: put it in {USER_ENV} and {PASSWORD_ENV}"
            )
        if parsed.scheme != "https" or not parsed.hostname:
            raise TargetError(f"{self.url_env}={self.url!r} is not an https:// SDK URL")
        return parsed.hostname, parsed.port or 443, parsed.path or "/sdk"

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure_tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=self.settings.get("ca_file"))

    def https(self, host: str, port: int) -> http.client.HTTPSConnection:
        """A connection to the server's (or a host's) HTTP file interfaces, checked as the
        SOAP connection is."""
        return http.client.HTTPSConnection(
            host, port, timeout=HTTP_TIMEOUT_S, context=self.ssl_context()
        )

    @property
    def service_instance(self) -> vim.ServiceInstance:
        if self._si is None:
            self._si = self._login()
        return self._si

    def _login(self) -> vim.ServiceInstance:
        host, port, path = self.endpoint
        with vsphere_call(f"login to https://{host}:{port}{path} as {self.user}", [self.password]):
            return SmartConnect(
                host=host, port=port, path=path, user=self.user, pwd=self.password.reveal(),
                sslContext=self.ssl_context(), httpConnectionTimeout=HTTP_TIMEOUT_S,
            )  # fmt: skip

    def close(self) -> None:
        si, self._si = self._si, None
        if si is not None:
            Disconnect(si)

    def available(self) -> tuple[bool, str]:
        unknown = sorted(set(self.settings) - SETTINGS)
        if unknown:  # a misspelt setting would otherwise be ignored silently
            raise TargetError(
                f"{self.name}: unknown settings {', '.join(unknown)}; "
                f"the VMware driver knows: {', '.join(sorted(SETTINGS))}"
            )
        if "unavailable" in self.settings:
            return False, self.settings["unavailable"]
        missing = [
            env for env, value in ((self.url_env, self.url), (USER_ENV, self.user)) if not value
        ] + ([] if self.password else [PASSWORD_ENV])
        if missing:
            return False, (
                f"no vSphere to run on: set {', '.join(missing)} (the vCenter or ESXi SDK URL "
                f"in {self.url_env}, the login in {USER_ENV} and {PASSWORD_ENV}); the driver's "
                "API cycle (OVA import, guestinfo, power on, destroy, sweep) is checked against "
                "govmomi's vCenter simulator in tests/test_vmware.py, which boots nothing"
            )
        about = self.service_instance.RetrieveContent().about  # a failed login is a fault
        return True, f"{about.fullName} at {self.url} as {self.user}"

    def sweep(self, run_root: Path) -> list[str]:
        return sweep_vmware(self.service_instance, run_root)

    def offers_channel(self, channel: str) -> tuple[bool, str]:
        if channel != GUESTINFO:
            return False, f"the VMware driver contextualizes through {GUESTINFO} only"
        return False, REAL_CONTEXT_RUN

    # --- placement ----------------------------------------------------------------------
    def placement(self) -> Placement:
        si = self.service_instance
        with vsphere_call("reading the vSphere inventory", [self.password]):
            dc = pick(inventory(si, vim.Datacenter), self.settings.get("datacenter"),
                      "datacenter", "the inventory")  # fmt: skip
            where = f"datacenter {dc.name}"
            datastore = pick(dc.datastore, self.settings.get("datastore"), "datastore", where)
            network = pick(dc.network, self.settings.get("network"), "network", where)
            pools = inventory(si, vim.ResourcePool, dc.hostFolder)
            pool = pick(pools, self.settings.get("resource_pool"), "resource pool", where)
            return Placement(dc, datastore, pool, network, dc.vmFolder)

    # --- launching ----------------------------------------------------------------------
    def launch(
        self,
        image: BootLoader,
        context: Context | None = None,
        profile: Profile | None = None,
        *,
        channel: str | None = None,
        image_format: str | None = None,
        kernel_args: str | None = None,
        boot_args: Sequence[str] = (),
        host_services: Mapping[str, int] | None = None,
    ) -> VmwareInstance:
        """Import the boot loader's OVA as a new VM, contextualize it through guestinfo (the one
        ``channel`` here), power it on. The VM's hardware is the OVF's: ``profile`` only labels
        the instance."""
        self._check(channel, image_format, kernel_args, host_services)
        if boot_args:
            raise TargetError(
                f"{self.name}: the boot loader reads boot options ({' '.join(boot_args)}) from "
                "SMBIOS OEM strings, which vSphere does not set per VM; ask for the OS version "
                "in the user-data's [ucernvm-begin] block (cvmfs_tag) instead"
            )
        keys = guestinfo(context)
        name = self.run.resource_name(self.name, secrets.token_hex(3))
        instance = VmwareInstance(name, self, profile or self.profile, self.run.dir / name)
        instance.accel, instance.accel_reason = "vsphere", "the vSphere host runs it"
        try:  # whatever stops the start (an error, Ctrl-C), nothing of it may stay behind
            with vsphere_call(f"launching {name}", [self.password]):
                self._start(instance, image.image("ova"), keys)
        except BaseException:
            with contextlib.suppress(TargetError):
                instance.destroy()
            raise
        return instance

    def _start(self, instance: VmwareInstance, ova: Path, keys: dict[str, str]) -> None:
        where = self.placement()
        instance.vm = vm = self._import(ova, instance.name, where)
        config = present(vm.config, f"the configuration of {instance.name}")
        instance.datastore_path = datastore_folder(present(config.files.vmPathName, "its path"))
        instance.datacenter_path = where.datacenter.name
        self._configure(instance, keys)
        self._tag(instance.vm)
        self._power_on(instance)

    def _check(
        self,
        channel: str | None,
        image_format: str | None,
        kernel_args: str | None,
        host_services: Mapping[str, int] | None,
    ) -> None:
        """Refuse what vSphere cannot carry out, before anything is made."""
        if kernel_args is not None:
            raise TargetError(
                f"{self.name}: vSphere boots the imported disk through its firmware; direct "
                "kernel boot (kernel_args) is a debugging aid of the QEMU targets"
            )
        if host_services:
            raise TargetError(
                f"{self.name}: a vSphere guest reaches the network of its port group, not this "
                "host's 127.0.0.1, so host_services cannot be forwarded; serve the repository "
                "where the guest's network reaches it"
            )
        if image_format not in (None, "ova"):
            raise TargetError(f"{self.name}: vSphere imports an OVA, not {image_format!r}")
        if channel not in (None, GUESTINFO):
            raise TargetError(
                f"{self.name}: the VMware driver hands the context over as {GUESTINFO} keys "
                f"(cloud-init's VMware datasource), not as {channel!r}"
            )

    def _import(self, ova: Path, name: str, where: Placement) -> vim.VirtualMachine:
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
        spec.configSpec.annotation = annotation(self.run)
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
            upload = LeaseUpload(self, lease, sum(m.size for m in members))
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

    def _configure(self, instance: VmwareInstance, keys: dict[str, str]) -> None:
        """guestinfo keys, the SMBIOS UUID, and a serial port writing to a datastore file."""
        vm = present(instance.vm, f"the VM of {instance.name}")
        datastore, folder = instance.datastore_path
        backing = vim.vm.device.VirtualSerialPort.FileBackingInfo(
            fileName=f"[{datastore}] {folder}/{CONSOLE_FILE}"
        )
        config = present(vm.config, f"the configuration of {instance.name}")
        existing = [
            d for d in config.hardware.device if isinstance(d, vim.vm.device.VirtualSerialPort)
        ]
        if existing:  # the OVF's serial port: give it a file
            serial, operation = existing[0], vim.vm.device.VirtualDeviceSpec.Operation.edit
            serial.backing = backing
        else:
            serial = vim.vm.device.VirtualSerialPort(backing=backing, yieldOnPoll=True)
            operation = vim.vm.device.VirtualDeviceSpec.Operation.add
        spec = vim.vm.ConfigSpec(
            uuid=instance.uuid,
            extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in keys.items()],
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation=operation, device=serial)],
        )
        run_task(f"ReconfigVM_Task of {instance.name}", lambda: vm.ReconfigVM_Task(spec))
        with vsphere_call(f"reading the configuration of {instance.name}", [self.password]):
            instance.uuid = present(vm.config, f"the configuration of {instance.name}").uuid

    def _tag(self, vm: vim.VirtualMachine) -> None:
        """The run id in a custom field too, where the server has custom fields (vCenter)."""
        manager = self.service_instance.RetrieveContent().customFieldsManager
        if manager is None:  # ESXi without vCenter
            return
        try:
            manager.SetField(entity=vm, key=run_field(manager).key, value=self.run.id)
        except vmodl.MethodFault as fault:  # e.g. no privilege: the annotation still names the run
            log.warning("custom field %s not set: %s", RUN_FIELD, describe_fault(fault))

    def _power_on(self, instance: VmwareInstance) -> None:
        vm = present(instance.vm, f"the VM of {instance.name}")
        run_task(f"PowerOnVM_Task of {instance.name}", vm.PowerOnVM_Task)
        if not instance.is_running():
            raise TargetError(f"{instance.name} is not powered on after PowerOnVM_Task")


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


class VmwareInstance(Instance):
    """One VM on vSphere.

    ``console()`` reads the serial port's file (``ucvm-console.log`` in the VM's datastore
    folder) over the datastore HTTP interface (``/folder/...``): vSphere has no console API.
    A server that writes no such file (govmomi's simulator runs no guest) gives ""."""

    def __init__(self, name: str, target: VmwareTarget, profile: Profile, workdir: Path) -> None:
        super().__init__(name, target, profile, workdir)
        self.target: VmwareTarget = target
        self.vm: vim.VirtualMachine | None = None
        self.datastore_path = ("", "")  # (datastore name, the VM's folder in it)
        self.datacenter_path = ""
        self._destroyed = False

    def __repr__(self) -> str:
        return f"VmwareInstance({self.name!r} on {self.target.url!r})"

    __str__ = __repr__

    def console(self) -> str:
        if self.vm is None:
            return ""
        host, port, _ = self.target.endpoint
        datastore, folder = self.datastore_path
        query = urlencode({"dcPath": self.datacenter_path, "dsName": datastore})
        path = f"/folder/{quote(folder)}/{CONSOLE_FILE}?{query}"
        hide = [self.target.password]
        with vsphere_call(f"reading the console of {self.name}", hide):
            conn = self.target.https(host, port)
            try:
                cookie = session_cookie(self.target.service_instance)
                conn.request("GET", path, headers={"Cookie": cookie})
                response = conn.getresponse()
                body = response.read()
            finally:
                conn.close()
        if response.status == 404:
            return ""
        if response.status != 200:
            raise TargetError(f"reading the console of {self.name}: HTTP {response.status}")
        return redact(body.decode("utf-8", "replace"), hide)

    def is_running(self) -> bool:
        if self.vm is None:
            return False
        return power_state(self.vm, self.name) == vim.VirtualMachine.PowerState.poweredOn

    def destroy(self) -> None:
        if self._destroyed:
            return
        if self.vm is not None:
            destroy_vm(self.vm, self.name)
            self.vm = None
        self._destroyed = True
