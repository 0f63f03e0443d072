"""What a run records about the machine it ran on: the facts that explain a figure that moved.

Each fact is cheap to get (a file of /proc, one ``--version``), and one that cannot be got
is left out rather than guessed: the hostname, the CPU count and load, the kernel, whether
KVM is usable, the QEMU and libvirt versions, and the other VMs running (QEMU processes) when
the facts were taken: at the start of ``ucvm-lab run``, so that its own guests are not counted.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Iterable
from pathlib import Path

from lab import proc

QEMU = "qemu-system-x86_64"
VERSION_TIMEOUT_S = 10.0


def host_facts() -> dict[str, str]:
    """The host's facts, by name (see the module's docstring)."""
    facts = {
        "host": socket.gethostname(),
        "cpu_count": str(os.cpu_count() or "?"),
        "kernel": platform.release(),
        "kvm": "usable" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "absent",
        "vms_running": str(count_vms(Path("/proc"))),
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        facts["load_1m"] = f"{os.getloadavg()[0]:.2f}"
    for name, command in (("qemu", (QEMU, "--version")), ("libvirt", ("virsh", "--version"))):
        version = first_line_of(command)
        if version:
            facts[name] = version
    return facts


def first_line_of(command: Iterable[str]) -> str | None:
    """The first line a version command prints, or None when it cannot run or fails."""
    try:
        done = proc.run(*command, timeout=VERSION_TIMEOUT_S, check=False)
    except proc.CommandError:
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def count_vms(proc_root: Path) -> int:
    """How many QEMU system emulators run now (any user's: a nightly, a test, a person's)."""
    count = 0
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if os.path.basename(argv0).startswith(b"qemu-system-"):
            count += 1
    return count
