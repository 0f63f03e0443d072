"""One VM on vSphere: its console (a serial port writing to a datastore file), its power
state, its destruction.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from pyVmomi import vim

from lab.targets.base import Instance, TargetError
from lab.targets.credentials import redact
from lab.targets.profiles import Profile
from lab.targets.vmware.vsphere import destroy_vm, power_state, session_cookie, vsphere_call

if TYPE_CHECKING:
    from lab.targets.vmware.target import VmwareTarget

CONSOLE_FILE = "ucvm-console.log"  # the serial port's file, in the VM's datastore folder


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
