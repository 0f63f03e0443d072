"""vSphere as the driver talks to it: faults as TargetErrors, tasks, the inventory, VMs.

Every vSphere fault (and every network error on the way) becomes a TargetError naming the
call and what vSphere said, its ``msg`` often empty: ``describe_fault`` reads the fault's own
properties instead. The password never appears in one (``vsphere_call``'s ``hide``).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pyVmomi import vim, vmodl
from pyVmomi.VmomiSupport import ManagedObject

from lab.targets.base import TargetError
from lab.targets.credentials import Secret, redact

TASK_BUDGET_S = 600
T = TypeVar("T")


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
