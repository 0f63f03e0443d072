"""One libvirt domain: its console log, its control channel, reboot and destroy.

The console is the first serial port, a file in the instance's work directory; the second
serial port is a channel to a shell /init starts once the boot ends, which evaluates nothing
before a line that is the instance's key (docs/os-on-demand.md). ``destroy()`` removes the
domain, stops the instance's metadata service, kills a QEMU that outlived libvirtd and
removes the work directory.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt

from lab import proc
from lab.services.metadata import MetadataService
from lab.targets.base import CommandResult, InfrastructureError, Instance, TargetError, WaitTimeout
from lab.targets.libvirt.host import undefine
from lab.targets.libvirt.network import GuestNetwork
from lab.targets.profiles import Profile

if TYPE_CHECKING:
    from lab.targets.libvirt.target import LibvirtTarget


class LibvirtInstance(Instance):
    """One domain of a LibvirtTarget, and what it owns on the host."""

    def __init__(self, name: str, target: LibvirtTarget, profile: Profile, workdir: Path) -> None:
        super().__init__(name, target, profile, workdir)
        self.domain: libvirt.virDomain | None = None
        self.qemu_pid: int | None = None
        self.network = GuestNetwork()
        self.smbios: dict[str, dict[str, str]] = {}
        self.context_medium: Path | None = None
        self.metadata: MetadataService | None = None  # the channel's service, if it has one
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
            message = f"libvirt lost {self.name}: {error.get_error_message()}"
            raise InfrastructureError(message) from error

    def run(self, command: str, timeout: float = 60) -> CommandResult:
        """Run a shell command in the guest over the second serial port (a shell /init starts
        once the boot ends), the channel's key first: a guest shell that has not seen it yet
        (a new boot, a restarted shell) starts evaluating after it, one that has skips it."""
        nonce = os.urandom(4).hex()
        # Up to the line's end: the status may arrive split over reads (100 as "1", then "00").
        end = re.compile(rf"__UCVM_RC_{nonce}=(\d+)\r?\n")
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
        done = proc.run(
            *args, f"{user}@127.0.0.1", command,
            input="",  # an empty stdin, as /dev/null: ssh must not read the lab's terminal
            timeout=timeout,
            check=False,  # the command's exit code is the result
            error=WaitTimeout,
            what=f"ssh {user}@{self.name} {command!r}",
        )  # fmt: skip
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

    def power_cut(self) -> None:
        """A power cut: a hard reset, with no sync and no shutdown in the guest (what it had
        not written to its disks is lost; QEMU keeps what it had written), then the next boot."""
        if self.domain is None:
            raise TargetError(f"{self.name} is not running")
        self.mark_new_boot()
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
