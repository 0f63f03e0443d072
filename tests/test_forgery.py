"""Nothing the guest is given can forge a verdict, and nobody but the lab gets a shell: real
guests with hostile user-data and metadata (a `ready` marker inside a value, a hostname of two
lines), and the console channel probed without its key, in the boot loader and in the OS.

The boots that could only be `ready` by a forged marker are held before scratch
(ucvm.break=scratch), so the real `ready` never comes: after the hold, observe_boot must find
no `ready`."""

from __future__ import annotations

import socket
import time

import pytest

from lab.build import context as ctx
from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader
from lab.observe import BREAK, BootRecord, observe_boot
from lab.services.repo import RepoServer
from lab.targets.libvirt import LibvirtInstance

pytestmark = pytest.mark.boot
BOOT_BUDGET_S = 240  # a boot loader-only boot under TCG: ~15-30 s
OS_BUDGET_S = 480
HELD = ["ucvm.os=none", "ucvm.break=scratch"]  # the real `ready` never comes
FORGED = "ucvm: phase=ready t=1.5 os=1.0 z="
# What a probe prints if the guest evaluates it; the text sent never contains it literally.
PROBE = "echo pw$((6 * 7))ned >/dev/console; echo pw$((6 * 7))ned"
PROBE_OUTPUT = "pw42ned"


@pytest.fixture
def make_target(make_local_target):
    return lambda profile: make_local_target("forgery", profile)


def held_record(instance: LibvirtInstance) -> BootRecord:
    """The boot's record once it is held before scratch: every context line is out by then."""
    instance.wait_for(BREAK.pattern, BOOT_BUDGET_S)
    return observe_boot(instance, 5)


def assert_no_forged_verdict(record: BootRecord, console: str) -> None:
    assert not record.ready and record.phase("ready") is None, record.summary()
    assert (record.outcome, record.failed_phase) == ("hang", "scratch"), record.summary()
    for line in console.splitlines():  # the guest may echo the value, never at a line's start
        if "phase=ready" in line:
            assert not line.lstrip("\r").startswith("ucvm: phase=ready"), line


def test_a_ready_marker_inside_a_user_data_value_is_no_verdict(
    make_target, boot_loader: BootLoader
) -> None:
    user_data = f"[ucernvm-begin]\ncvmfs_server=http://10.0.2.2/a {FORGED}\n[ucernvm-end]\n"
    context = ctx.Context(instance_id="i-forgery", hostname="forgery", user_data=user_data.encode())
    with make_target("kvm").launch(boot_loader, context, boot_args=HELD) as instance:
        record = held_record(instance)
        console = instance.console()
    assert_no_forged_verdict(record, console)
    assert record.phase("context") is not None
    server = record.context_step("cvmfs_server") or record.context_step("ucernvm")
    assert server is not None, record.phase_table()  # the line was read: applied or rejected


def test_a_metadata_hostname_of_two_lines_is_no_verdict(
    make_target, boot_loader: BootLoader
) -> None:
    context = ctx.Context(instance_id="i-forgery", hostname="forgery", user_data=b"")
    with make_target("ec2").launch(boot_loader, context, boot_args=HELD) as instance:
        # the lab's Context refuses such a name: put it in the service's tree directly, before
        # the guest's kernel is even up (every API version shares one meta-data tree)
        tree = instance.metadata._responder._root  # type: ignore[union-attr]  # a test hook
        meta_data = tree.lookup("latest/meta-data")
        meta_data.entries["local-hostname"] = f"x\n{FORGED}".encode()
        record = held_record(instance)
        console = instance.console()
        asked = [path for _, path, _ in instance.metadata.requests]  # type: ignore[union-attr]
    assert "/latest/meta-data/local-hostname" in asked
    assert_no_forged_verdict(record, console)
    hostname = record.context_step("hostname")
    assert hostname is not None and hostname.status == "rejected", record.phase_table()
    if "value" in hostname.fields:  # echoed: in one piece, on one line
        assert hostname.fields["value"] == f"x\n{FORGED}"


# --- the console channel: nothing evaluated without the instance's key ------------------------


def probe_without_the_key(instance: LibvirtInstance) -> bytes:
    """Sends the probe without the key, then after a wrong key; returns what came back."""
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.connect(str(instance.workdir / "channel.sock"))
    wrong = "0" * 64 if instance.channel_key != "0" * 64 else "1" * 64
    with channel:
        channel.sendall(
            f"{PROBE}\n{wrong}\n{PROBE}\n{instance.channel_key[:-1]}\n{PROBE}\n".encode()
        )
        channel.settimeout(0.5)
        answer, deadline = b"", time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                answer += channel.recv(65536)
            except TimeoutError:
                continue
    return answer


def check_channel(instance: LibvirtInstance) -> None:
    answer = probe_without_the_key(instance)
    assert answer == b"", answer
    assert PROBE_OUTPUT not in instance.console()
    result = instance.run(PROBE, timeout=60)  # the lab's own run(): the key first
    assert result.ok and result.output.strip().endswith(PROBE_OUTPUT), result
    assert instance.channel_key not in instance.console()


def test_the_boot_loader_s_channel_needs_the_key(make_target, boot_loader: BootLoader) -> None:
    with make_target("kvm").launch(boot_loader, boot_args=["ucvm.os=none"]) as instance:
        assert observe_boot(instance, BOOT_BUDGET_S).ready
        check_channel(instance)


def test_the_os_channel_needs_the_key_and_host_keys_are_the_instance_s(
    make_target, boot_loader: BootLoader, repo_server: RepoServer
) -> None:
    services = {GUEST_REPO_ADDRESS: repo_server.port}
    with make_target("kvm").launch(boot_loader, host_services=services) as instance:
        record = observe_boot(instance, OS_BUDGET_S)
        assert record.ready, f"{record.summary()}\n{instance.console()[-4000:]}"
        check_channel(instance)
        keys = instance.run(
            "stat -c '%a %n' /run/ucvm/channel.key /etc/ssh/ssh_host_*_key; "
            "systemctl is-active ucvm-channel-key.service ucvm-ssh-hostkeys.service"
        )
    assert keys.ok, keys.output
    lines = keys.output.split()
    assert "600" in lines and "/run/ucvm/channel.key" in lines
    assert "/etc/ssh/ssh_host_ed25519_key" in lines  # made at this boot: the image has none
    assert record.ready_field("units_failed") == "0", record.phase_table()
