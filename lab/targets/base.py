"""Target and Instance: the one interface every driver implements.

A Target is where instances run (a libvirt host, a cloud account); an Instance is one booted
appliance. Instances are context managers: leaving the ``with`` block destroys them, whatever
happened inside. Like openQA's backend base class, what a driver does not implement fails
loudly here instead of pretending.
"""

from __future__ import annotations

import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar

from lab.run import Run
from lab.targets.profiles import Profile

if TYPE_CHECKING:
    from lab.build.bootloader import BootLoader
    from lab.build.context import Context

POLL_S = 0.1


# Why the context suite cannot run on a cloud yet: its checks need the lab's repository and an
# SSH forward on this host's 127.0.0.1, which a cloud instance cannot reach.
REAL_CONTEXT_RUN = (
    "a context cell on a real cloud needs an OS repository and an SSH path the cloud can reach "
    "(a public repository named by cvmfs_server); the lab's are on 127.0.0.1 only (not built yet)"
)


class TargetError(RuntimeError):
    """A target could not do what was asked (launch, reboot, ...); the message says why."""


class WaitTimeout(TargetError):
    """The awaited console line did not appear within its budget: the guest hangs."""


class WaitAborted(TargetError):
    """A line matching ``stop_on`` appeared first (a failed phase, a kernel panic)."""


class InstanceGone(TargetError):
    """The instance stopped running while we waited for it."""


@dataclass
class CommandResult:
    command: str
    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class Timeline:
    """When (host seconds since launch) each console line was first seen."""

    launched_at: float = field(default_factory=time.monotonic)
    lines: list[tuple[float, str]] = field(default_factory=list)
    _partial: str = ""
    _consumed: int = 0

    def feed(self, console: str) -> None:
        now = time.monotonic() - self.launched_at
        fresh = self._partial + console[self._consumed :]
        self._consumed = len(console)
        *complete, self._partial = fresh.split("\n")
        self.lines.extend((now, line.rstrip("\r")) for line in complete)


class Instance(ABC):
    """One booted appliance. Subclasses implement the abstract methods; the rest is shared."""

    def __init__(self, name: str, target: Target, profile: Profile, workdir: Path) -> None:
        self.name = name
        self.target = target
        self.profile = profile
        self.workdir = workdir
        # The SMBIOS system UUID the guest sees; it names the instance to host services
        # (the repository server's access log counts the bytes sent to each instance by it).
        self.uuid = str(uuid.uuid4())
        self.timeline = Timeline()
        self.accel = "unknown"  # kvm | tcg, set by the driver at launch
        self.accel_reason = ""
        self._boot_offset = 0  # where the current boot starts in the console text
        self._boot_line = 0  # ... and in the timeline

    # --- what every driver must provide --------------------------------------------------
    @abstractmethod
    def console(self) -> str:
        """Everything the guest wrote on its serial console so far."""

    @abstractmethod
    def is_running(self) -> bool: ...

    @abstractmethod
    def destroy(self) -> None:
        """Stop the instance and remove everything it owns. Idempotent."""

    # --- optional capabilities: loud defaults ---------------------------------------------
    def run(self, command: str, timeout: float = 60) -> CommandResult:
        raise TargetError(f"{type(self).__name__} has no channel to run commands in the guest")

    def reboot(self) -> None:
        raise TargetError(f"{type(self).__name__} cannot reboot an instance")

    # --- shared behaviour ------------------------------------------------------------------
    def current_boot_console(self) -> str:
        return self.console()[self._boot_offset :]

    def current_boot_timeline(self) -> list[tuple[float, str]]:
        self.timeline.feed(self.console())
        return self.timeline.lines[self._boot_line :]

    def mark_new_boot(self) -> None:
        """From now on, waits and host times concern the next boot."""
        text = self.console()
        self.timeline.feed(text)
        self._boot_offset = len(text)
        self._boot_line = len(self.timeline.lines)
        self.timeline.launched_at = time.monotonic()

    def wait_for(self, pattern: str, timeout: float, *, stop_on: str | None = None) -> str:
        """The first console line of the current boot matching ``pattern`` (searched line by
        line, with re.MULTILINE: anchor a marker with `^`, lab.observe.READY).

        Raises WaitAborted when a line matching ``stop_on`` comes first, WaitTimeout when
        nothing matches within ``timeout`` seconds, InstanceGone when the guest stops.
        """
        wanted = re.compile(pattern, re.MULTILINE)
        abort = re.compile(stop_on, re.MULTILINE) if stop_on else None
        deadline = time.monotonic() + timeout
        checked = self._boot_line
        while True:
            self.timeline.feed(self.console())
            # Complete lines only: a marker is judged once its newline has arrived.
            for _, line in self.timeline.lines[checked:]:
                if wanted.search(line):
                    return line
                if abort and abort.search(line):
                    raise WaitAborted(line.strip())
            checked = len(self.timeline.lines)
            if not self.is_running():
                raise InstanceGone(f"{self.name} stopped before {pattern!r} appeared")
            if time.monotonic() > deadline:
                raise WaitTimeout(
                    f"no {pattern!r} on the console of {self.name} within {timeout:g} s"
                )
            time.sleep(POLL_S)

    def __enter__(self) -> Instance:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()


class Target(ABC):
    """Where instances run. ``available()`` says whether it can run here, and if not, why."""

    SETTINGS: ClassVar[frozenset[str]] = frozenset()
    """The keys of a matrix target's ``settings:`` this driver reads; the matrix refuses others
    (a misspelt key would otherwise be ignored: lab.targets.registry passes these to lab.matrix)."""

    def __init__(self, name: str, profile: Profile, settings: dict[str, str], run: Run) -> None:
        self.name = name
        self.profile = profile
        self.settings = settings
        self.run = run

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, what) if instances can run here; (False, why not) when the platform is not
        here by nature (no emulation, no credentials). A broken host that should be there
        (local libvirtd down) raises TargetError: its cells fail rather than skip."""

    def sweep(self, run_root: Path) -> list[str]:
        """Remove what dead runs under ``run_root`` left on this target; one line per item.
        Local targets are swept by their host (lab.targets.libvirt.sweep); a remote driver
        sweeps its account here."""
        return []

    def offers_channel(self, channel: str) -> tuple[bool, str]:
        """(True, "") if this driver can deliver a context on ``channel`` of its profile, else
        (False, why): a channel the platform has but this driver cannot imitate."""
        if channel in self.profile.channels:
            return True, ""
        return False, f"the {self.profile.name} profile has no channel {channel!r}"

    @abstractmethod
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
    ) -> Instance:
        """Boot ``image`` with this target's (or the given) profile; the caller waits for markers.

        ``kernel_args`` switches to direct kernel boot with those extra arguments (a debugging
        aid: images are otherwise booted from disk or CD through the firmware).
        ``boot_args`` are per-instance boot options (``ucvm.version=1.1``) the platform hands
        the guest beside the image's own command line (SMBIOS OEM strings here).
        ``host_services`` maps a guest address (``169.254.169.100:80``) to a port on the host's
        127.0.0.1 that the guest reaches there (the OS repository).
        ``context`` is the user's contextualization (lab.build.context), delivered on the
        platform's ``channel`` (by default the profile's first) as the platform delivers it."""
