"""How a person reaches a running instance, and the instances a run keeps for them.

``Reach`` says where an instance's serial console is logged, how to open its console channel
(a root shell in the guest that evaluates nothing before a line that is the instance's key:
docs/os-on-demand.md) and the host port that forwards to its SSH server (a launch with a
context has one). ``ucvm-lab up`` prints it; ``keep()`` records it for an instance that
``ucvm-lab run --keep-failed`` leaves running after its cell failed, in
``RUN_DIR/kept/NAME.json``, and ``kept()`` reads those records back. The channel's key goes
beside, in a file of mode 0600, so that the shell command needs no secret on its line.

A kept instance is its run's: ``ucvm-lab down RUN`` or ``ucvm-lab sweep`` removes it, with the
run's repository server and its directory.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.run import Run
from lab.targets.base import Instance

KEPT_DIR = "kept"
SSH_OPTIONS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


@dataclass(frozen=True)
class Reach:
    instance: str
    console_log: str | None = None
    channel_socket: str | None = None
    key_file: str | None = None
    ssh_port: int = 0
    test: str = ""  # the cell whose failure kept it (keep() only)

    def lines(self, ssh_user: str | None = None) -> list[str]:
        """The commands, one a line (``ssh_user``: the account the user-data creates)."""
        lines = [f"  console  tail -f {self.console_log or '(the driver keeps no log here)'}"]
        if self.channel_socket and self.key_file:
            lines += [
                f"  shell    (cat {self.key_file}; cat) | socat - UNIX-CONNECT:"
                f"{self.channel_socket}",
                "           the guest's console channel: a root shell, one command a line",
            ]
        if self.ssh_port:
            user = ssh_user or "USER"
            note = "" if ssh_user else "   (USER: an account the user-data gives a key)"
            lines.append(f"  ssh      ssh -p {self.ssh_port} {SSH_OPTIONS} {user}@127.0.0.1{note}")
        else:
            lines.append("  ssh      none: launched without user-data, so no SSH forward")
        return lines


def reach(instance: Instance, key_dir: Path, test: str = "") -> Reach:
    """How to reach ``instance``; its channel key written (0600) to ``key_dir`` once."""
    console = getattr(instance, "console_log", None)
    key = getattr(instance, "channel_key", None)
    key_file = None
    if key:
        key_file = key_dir / f"{instance.name}.channel-key"
        with contextlib.suppress(FileExistsError):
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as stream:
                stream.write(key + "\n")
    network = getattr(instance, "network", None)
    return Reach(
        instance=instance.name,
        console_log=str(console) if console else None,
        channel_socket=str(instance.workdir / "channel.sock") if key else None,
        key_file=str(key_file) if key_file else None,
        ssh_port=int(getattr(network, "ssh_port", 0) or 0),
        test=test,
    )


def keep(instance: Instance, run: Run, test: str) -> Reach:
    """Record ``instance`` as kept by ``run`` after ``test`` failed (its caller does not
    destroy it)."""
    directory = run.dir / KEPT_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    found = reach(instance, directory, test)
    (directory / f"{instance.name}.json").write_text(json.dumps(asdict(found), indent=2))
    return found


def kept(run_dir: Path) -> list[Reach]:
    """The instances ``run_dir`` keeps, by name (a record that does not read is skipped)."""
    found = []
    for record in sorted((run_dir / KEPT_DIR).glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            found.append(Reach(**json.loads(record.read_text())))
    return found
