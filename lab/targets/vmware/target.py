"""The VMware target: one vCenter or ESXi host, its login, its placement and the launch.

A launch imports the boot loader's OVA (lab.targets.vmware.ova), sets the guestinfo keys
cloud-init's VMware datasource reads and a serial port writing to a datastore file, tags the
VM with the run and powers it on.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from lab.build.context import Context
from lab.run import Run
from lab.targets.base import REAL_CONTEXT_RUN, LaunchRequest, Target, TargetError
from lab.targets.credentials import Secret
from lab.targets.profiles import Profile
from lab.targets.vmware.instance import CONSOLE_FILE, VmwareInstance
from lab.targets.vmware.ova import OvaImport
from lab.targets.vmware.sweep import RUN_FIELD, run_field, sweep_vmware
from lab.targets.vmware.vsphere import (
    Placement,
    datastore_folder,
    describe_fault,
    inventory,
    pick,
    present,
    run_task,
    vsphere_call,
)

log = logging.getLogger(__name__)

DEFAULT_URL_ENV = "UCVM_VSPHERE_URL"
USER_ENV = "UCVM_VSPHERE_USER"
PASSWORD_ENV = "UCVM_VSPHERE_PASSWORD"
GUESTINFO = "guestinfo"  # the context channel: extraConfig keys the guest reads
HTTP_TIMEOUT_S = 60
SETTINGS = frozenset(
    ("url_env", "datacenter", "datastore", "resource_pool", "network", "ca_file", "insecure_tls",
     "unavailable")
)  # fmt: skip


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


class VmwareTarget(Target[VmwareInstance]):
    """A vCenter or ESXi host, reached with the login in the environment.

    ``close()`` logs out; a target that is not closed leaves its session to expire."""

    SETTINGS = SETTINGS  # the module's list, also checked by available()
    IMAGE_FORMATS = frozenset(("ova",))
    CHANNELS = frozenset((GUESTINFO,))
    REFUSALS: ClassVar[Mapping[str, str]] = {  # what vSphere cannot carry out
        "kernel_args": "{name}: vSphere boots the imported disk through its firmware; direct "
        "kernel boot (kernel_args) is a debugging aid of the QEMU targets",
        "host_services": "{name}: a vSphere guest reaches the network of its port group, not "
        "this host's 127.0.0.1, so host_services cannot be forwarded; serve the repository "
        "where the guest's network reaches it",
        "image_format": "{name}: vSphere imports an OVA, not {image_format!r}",
        "channel": f"{{name}}: the VMware driver hands the context over as {GUESTINFO} keys "
        "(cloud-init's VMware datasource), not as {channel!r}",
        "boot_args": "{name}: the boot loader reads boot options ({boot_args}) from SMBIOS OEM "
        "strings, which vSphere does not set per VM; ask for the OS version in the "
        "user-data's [ucernvm-begin] block (cvmfs_tag) instead",
        "metadata_delay_s": "{name}: vSphere hands guestinfo over through VMware Tools; there "
        "is no metadata service to slow down (metadata_delay_s)",
    }

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
    def _new_instance(self, name: str, profile: Profile, workdir: Path) -> VmwareInstance:
        instance = VmwareInstance(name, self, profile, workdir)
        instance.accel, instance.accel_reason = "vsphere", "the vSphere host runs it"
        return instance

    def _start(self, instance: VmwareInstance, request: LaunchRequest) -> None:
        """Import the boot loader's OVA as a new VM, contextualize it through guestinfo (the one
        channel here), power it on. The VM's hardware is the OVF's: the profile only labels
        the instance."""
        keys = guestinfo(request.context)
        with vsphere_call(f"launching {instance.name}", [self.password]):
            where = self.placement()
            instance.vm = vm = OvaImport(self).run(request.image.image("ova"), instance.name, where)
            config = present(vm.config, f"the configuration of {instance.name}")
            path = present(config.files.vmPathName, "its path")
            instance.datastore_path = datastore_folder(path)
            instance.datacenter_path = where.datacenter.name
            self._configure(instance, keys)
            self._tag(instance.vm)
            self._power_on(instance)

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
