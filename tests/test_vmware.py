"""The VMware driver against govmomi's vCenter simulator (built once from Debian's Go packages).

The OVA is the lab's real boot loader OVA (conftest's ``boot_loader``), imported through
OvfManager, ImportVApp and the NFC lease as on a real vCenter. The simulator runs no guest:
it accepts the disk upload without keeping it and writes no serial output, so the console
test writes the serial port's file into the datastore itself, as an ESXi host would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from lab.build.bootloader import BootLoader
from lab.build.context import Context
from lab.run import Run, new_run_id
from lab.services.emulators import Vcsim
from lab.targets.base import TargetError
from lab.targets.profiles import PROFILES
from lab.targets.vmware import VmwareInstance, VmwareTarget, sweep_vmware
from lab.targets.vmware.instance import CONSOLE_FILE
from lab.targets.vmware.sweep import RUN_FIELD
from lab.targets.vmware.target import PASSWORD_ENV, USER_ENV

USER = "ucvm-tester"
PASSWORD = f"Vcsim-{secrets.token_hex(8)}-pw"  # appears nowhere unless leaked
SIMULATOR_SETTINGS = {"insecure_tls": "true"}  # the simulator's certificate is self-signed
CONTEXT = Context(
    instance_id="i-ucvm-vmware-1",
    hostname="ucvm-on-vsphere",
    user_data=b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo hello from guestinfo']\n",
    ssh_public_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVjdm0tbGFi tester@lab",),
)


@pytest.fixture(scope="module")
def vcsim() -> Iterator[Vcsim]:
    threads_before = set(threading.enumerate())
    server = Vcsim(USER, PASSWORD)
    with server:
        pid = server.pid
        yield server
    assert pid is not None and not process_lives(pid), "the simulator outlived its fixture"
    assert not Path(server.tmpdir).exists(), "the simulator left its datastore behind"
    assert set(threading.enumerate()) <= threads_before, "a thread outlived the tests"


def process_lives(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; whoever adopted it has not reaped it yet


@pytest.fixture(scope="module")
def inspector(vcsim: Vcsim) -> Iterator[vim.ServiceInstance]:
    """A session of our own, to look at the inventory as a vSphere user would."""
    host_port = vcsim.url.split("/")[2]
    host, port = host_port.rsplit(":", 1)
    si = SmartConnect(
        host=host, port=int(port), user=USER, pwd=PASSWORD, disableSslCertValidation=True
    )
    yield si
    Disconnect(si)


@pytest.fixture
def vsphere_env(vcsim: Vcsim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UCVM_VSPHERE_URL", vcsim.url)
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def run(run_root: Path) -> Iterator[Run]:
    live = Run(new_run_id(), run_root).hold()
    yield live
    live.release()


def make_target(run: Run, **settings: str) -> VmwareTarget:
    return VmwareTarget("vmware", PROFILES["vmware"], SIMULATOR_SETTINGS | settings, run)


@pytest.fixture
def target(vsphere_env: None, run: Run) -> Iterator[VmwareTarget]:
    target = make_target(run)
    yield target
    target.close()


def vms_named(si: vim.ServiceInstance, fragment: str) -> list[vim.VirtualMachine]:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return [vm for vm in view.view if fragment in vm.name]
    finally:
        view.DestroyView()


def datastore_paths(si: vim.ServiceInstance) -> list[str]:
    """Every folder and file on the datastores, as the datastore browser lists them."""
    content = si.RetrieveContent()
    found = []
    for datastore in content.rootFolder.childEntity[0].datastore:
        spec = vim.host.DatastoreBrowser.SearchSpec(matchPattern=["*"])
        task = datastore.browser.SearchDatastoreSubFolders_Task(f"[{datastore.name}]", spec)
        while task.info.state in ("queued", "running"):
            time.sleep(0.05)
        for folder in task.info.result:
            found += [f"{folder.folderPath}/{f.path}" for f in folder.file]
    return found


def decoded(extra: dict[str, str], key: str) -> bytes:
    assert extra[f"{key}.encoding"] == "base64"
    return base64.b64decode(extra[key])


def test_launch_imports_the_ova_with_guestinfo_and_destroy_leaves_nothing(
    target: VmwareTarget, boot_loader: BootLoader, inspector: vim.ServiceInstance, vcsim: Vcsim
) -> None:
    with target.launch(boot_loader, CONTEXT) as instance:
        name = instance.name
        assert name.startswith(f"ucvm-{target.run.id}-")
        (vm,) = vms_named(inspector, name)
        extra = {option.key: option.value for option in vm.config.extraConfig}
        assert decoded(extra, "guestinfo.userdata") == CONTEXT.user_data
        assert json.loads(decoded(extra, "guestinfo.metadata")) == {
            "instance-id": CONTEXT.instance_id,
            "local-hostname": CONTEXT.hostname,
            "public-keys": list(CONTEXT.ssh_public_keys),
        }
        assert vm.runtime.powerState == "poweredOn" and instance.is_running()
        assert target.run.id in vm.config.annotation
        fields = {f.key: f.name for f in vm.availableField}
        assert {fields[v.key]: v.value for v in vm.customValue} == {RUN_FIELD: target.run.id}
        assert vm.config.uuid == instance.uuid
        disks = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
        assert len(disks) == 1 and disks[0].capacityInKB > 0
        (serial,) = [
            d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualSerialPort)
        ]
        assert serial.backing.fileName.endswith(f"{name}/{CONSOLE_FILE}")
        assert instance.console() == ""  # the simulator runs no guest: nothing written yet
        with tarfile.open(boot_loader.image("ova")) as ova:
            vmdk_bytes = ova.getmember("ucvm-disk1.vmdk").size
        assert f"transferred {vmdk_bytes} bytes" in vcsim.log()  # the NFC upload, whole
        assert [p for p in datastore_paths(inspector) if name in p], "the VM has its files"
    assert not instance.is_running()
    assert vms_named(inspector, target.run.id) == []
    assert [p for p in datastore_paths(inspector) if name in p] == []
    assert [p for p, _, _ in os.walk(vcsim.tmpdir) if name in p] == []
    instance.destroy()  # idempotent


def test_console_reads_the_serial_file_over_the_datastore_interface(
    target: VmwareTarget, boot_loader: BootLoader, inspector: vim.ServiceInstance
) -> None:
    with target.launch(boot_loader) as instance:
        (vm,) = vms_named(inspector, instance.name)
        datastore = vm.datastore[0].info.url  # the simulator's datastore is a local directory
        folder = vm.config.files.vmPathName.split("] ", 1)[1].rsplit("/", 1)[0]
        serial_file = Path(datastore, folder, CONSOLE_FILE)
        serial_file.write_text("ucvm: phase=start t=0.51\n")  # what the host would write
        assert instance.console() == "ucvm: phase=start t=0.51\n"
        assert instance.wait_for(r"phase=start", timeout=5) == "ucvm: phase=start t=0.51"


def test_the_sweeper_destroys_what_dead_runs_left_and_keeps_live_ones(
    vsphere_env: None, run: Run, run_root: Path, boot_loader: BootLoader, tmp_path: Path
) -> None:
    dead = Run(new_run_id(), run_root).hold()
    elsewhere = Run(new_run_id(), tmp_path / "another-lab").hold()
    with contextlib.ExitStack() as cleanup:
        targets = [make_target(r) for r in (run, dead, elsewhere)]
        for target in targets:
            cleanup.callback(target.close)
        live_vm, dead_vm, other_vm = (cleanup.enter_context(t.launch(boot_loader)) for t in targets)
        dead.release()  # the run ends without destroying its VM, as a crashed run would
        elsewhere.release()
        si = targets[0].service_instance
        assert sweep_vmware(si, run_root) == [f"vm {dead_vm.name}"]
        assert vms_named(si, dead_vm.name) == []
        assert live_vm.is_running() and other_vm.is_running()
        assert vms_named(si, "DC0_H0_VM0"), "the simulator's own VMs are not the lab's"
        assert sweep_vmware(si, run_root) == []
        # Another lab's run root (a vCenter may serve several): only its own sweeper acts.
        assert sweep_vmware(si, elsewhere.root) == [f"vm {other_vm.name}"]


def test_the_password_appears_in_no_log_message_repr_or_console(
    target: VmwareTarget,
    run: Run,
    boot_loader: BootLoader,
    vcsim: Vcsim,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, pyvmomi's included
    texts = []
    with target.launch(boot_loader, CONTEXT) as instance:
        texts += [repr(target), str(target), repr(instance), str(instance)]
        (vm,) = vms_named(target.service_instance, instance.name)
        folder = vm.config.files.vmPathName.split("] ", 1)[1].rsplit("/", 1)[0]
        # A guest that prints the password on its console (a leaked secret in user-data):
        Path(vm.datastore[0].info.url, folder, CONSOLE_FILE).write_text(f"pw={PASSWORD}\n")
        texts.append(instance.console())
        assert texts[-1] == "pw=***\n"
    bad_datastore = make_target(run, datastore="no-such-datastore")
    with pytest.raises(
        TargetError, match=r"no datastore named 'no-such-datastore'.*LocalDS_0"
    ) as no_datastore:
        bad_datastore.launch(boot_loader, CONTEXT)
    bad_datastore.close()
    texts.append(str(no_datastore.value))
    wrong_password = f"Wrong-{secrets.token_hex(8)}"
    monkeypatch.setenv(PASSWORD_ENV, wrong_password)
    with pytest.raises(TargetError) as login_failure:
        make_target(run).available()
    assert "InvalidLogin" in str(login_failure.value)
    texts.append(str(login_failure.value))
    assert "CreateImportSpec" in caplog.text  # the capture works: the driver's warning is in it
    captured = capfd.readouterr()
    everything = "\n".join([*texts, caplog.text, captured.out, captured.err, vcsim.log()])
    assert PASSWORD not in everything and wrong_password not in everything
    assert vms_named(target.service_instance, run.id) == []


def test_requests_vsphere_cannot_carry_out_are_refused_before_anything_is_made(
    target: VmwareTarget, boot_loader: BootLoader
) -> None:
    with pytest.raises(TargetError, match="firmware"):
        target.launch(boot_loader, kernel_args="ucvm.break=network")
    with pytest.raises(TargetError, match="host_services"):
        target.launch(boot_loader, host_services={"169.254.169.100:80": 8080})
    with pytest.raises(TargetError, match="SMBIOS OEM strings"):
        target.launch(boot_loader, boot_args=("ucvm.version=1.1",))
    with pytest.raises(TargetError, match="guestinfo"):
        target.launch(boot_loader, CONTEXT, channel="nocloud")
    assert vms_named(target.service_instance, target.run.id) == []


def test_available_says_which_variables_are_missing(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("UCVM_VSPHERE_URL", "MY_VCENTER", USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(variable, raising=False)
    ok, why = make_target(run).available()
    assert not ok
    assert all(v in why for v in ("UCVM_VSPHERE_URL", USER_ENV, PASSWORD_ENV)), why
    ok, why = make_target(run, url_env="MY_VCENTER").available()
    assert not ok and "MY_VCENTER" in why


def test_a_misspelt_setting_is_a_fault_not_a_silent_default(vsphere_env: None, run: Run) -> None:
    with pytest.raises(TargetError, match="unknown settings datstore"):
        make_target(run, datstore="LocalDS_0").available()


def test_available_logs_in(target: VmwareTarget) -> None:
    ok, why = target.available()
    assert ok and "vCenter" in why and PASSWORD not in why


def test_destroy_of_a_vm_removed_behind_our_back_is_quiet(
    target: VmwareTarget, boot_loader: BootLoader, inspector: vim.ServiceInstance
) -> None:
    instance: VmwareInstance = target.launch(boot_loader)
    (vm,) = vms_named(inspector, instance.name)
    vm.PowerOffVM_Task()
    while vm.runtime.powerState != "poweredOff":
        time.sleep(0.05)
    task = vm.Destroy_Task()
    while task.info.state in ("queued", "running"):
        time.sleep(0.05)
    assert not instance.is_running()
    instance.destroy()
    instance.destroy()


def test_certificates_are_checked_unless_the_setting_turns_checks_off(
    vsphere_env: None, run: Run
) -> None:
    checked = VmwareTarget("vmware", PROFILES["vmware"], {}, run)
    with pytest.raises(TargetError, match="CERTIFICATE_VERIFY_FAILED"):
        checked.available()


def test_a_failed_import_leaves_no_vm(
    target: VmwareTarget, boot_loader: BootLoader, tmp_path: Path
) -> None:
    """An OVA without its disk: the VM exists once ImportVApp returns, and must go again."""
    with (
        tarfile.open(boot_loader.image("ova")) as real,
        tarfile.open(tmp_path / "ucvm.ova", "w") as broken,
    ):
        descriptor = real.getmember("ucvm.ovf")
        broken.addfile(descriptor, real.extractfile(descriptor))
    with pytest.raises(TargetError, match=r"lacks ucvm-disk1\.vmdk"):
        target.launch(BootLoader(tmp_path, boot_loader.kernel_release))
    assert vms_named(target.service_instance, target.run.id) == []


def test_the_simulator_exits_when_its_parent_dies(tmp_path: Path) -> None:
    """A parent killed outright (no clean-up runs) leaves no simulator and no datastore."""
    parent = subprocess.Popen(
        [sys.executable, "-c", SIMULATOR_PARENT, Vcsim.build(), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    with parent:
        simulator = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert list(tmp_path.glob("govcsim-*")), "the simulator made its datastore"
        parent.kill()
    deadline = time.monotonic() + 10
    while process_lives(simulator) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_lives(simulator)
    assert not list(tmp_path.glob("govcsim-*"))


# Starts the simulator, says its pid once it serves, then waits to be killed.
SIMULATOR_PARENT = """
import subprocess, sys, time
env = {"TMPDIR": sys.argv[2], "UCVM_VCSIM_USER": "u", "UCVM_VCSIM_PASSWORD": "p"}
child = subprocess.Popen([sys.argv[1]], env=env, stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(600)
"""
