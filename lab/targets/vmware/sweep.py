"""The vSphere sweeper: the VMs dead runs of this host's run root left on a vCenter.

Every VM is named ``ucvm-<run id>-...`` and its annotation names the run and its run root
(and a custom field the run, where the server has custom fields); one vCenter may serve
several labs, so only VMs whose annotation names this host's run root are touched.
"""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path

from pyVmomi import vim, vmodl

from lab.run import PREFIX, Run, run_is_alive
from lab.targets.vmware.vsphere import destroy_vm, inventory, vsphere_call

RUN_FIELD = "ucvm-run"  # the custom field carrying the run id
VM_NAME = re.compile(rf"^{re.escape(PREFIX)}([^-]+)-")


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
