"""Target and Instance: the one interface every driver implements.

A Target is where instances run (a libvirt host, a cloud account); an Instance is one booted
appliance. Instances are context managers: leaving the ``with`` block destroys them, whatever
happened inside. Like openQA's backend base class, what a driver does not implement fails
loudly here instead of pretending.

Launching is written once, here: ``Target.launch()`` settles the call into a frozen
LaunchRequest and ``launch_request()`` does what every driver needs (refusals, naming through
the run, the work directory, undo on failure) around the driver's own ``_start()``.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from lab.run import Run
from lab.runroot import make_dir
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


class InfrastructureError(TargetError):
    """The lab's own machinery failed, not the appliance (libvirtd gone, the emulator did not
    start, the host's disk full): the cell is incomplete, and a gate retries it. The report
    knows it by its name (lab.evidence.INFRASTRUCTURE_ERROR)."""


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

    def __init__(self, name: str, target: Target[Any], profile: Profile, workdir: Path) -> None:
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

    def power_cut(self) -> None:
        """Cut the power and give it back: the guest stops at once, nothing synced or shut
        down, and boots again; waits and host times then concern the new boot (a fault test)."""
        raise TargetError(f"{type(self).__name__} cannot cut the power of an instance")

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
        held = self.target.run.held
        if held is not None:  # --keep-failed: the end of the test keeps or destroys it
            held.append(self)
            return
        self.destroy()


@dataclass(frozen=True)
class LaunchRequest:
    """One launch, its options settled once: what every driver's ``_start()`` is handed.

    Target.launch() builds it from the public call; a caller that needs no settling (a probe
    boot, a benchmark's subclass) may build one and hand it to Target.launch_request()."""

    image: BootLoader
    image_format: str  # the format asked for, else the profile's own (settled here only)
    profile: Profile  # the one asked for, else the target's
    run_id: str  # the run the instance belongs to: its resources are named and tagged by it
    context: Context | None = None  # the user's contextualization (lab.build.context)
    channel: str | None = None  # the context's channel; None: the driver's default
    kernel_args: str | None = None  # direct kernel boot with these extra arguments
    boot_args: tuple[str, ...] = ()  # per-instance boot options (ucvm.version=1.1)
    host_services: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    metadata_delay_s: float = 0  # slows every answer of the metadata service (a fault test)
    accel: str | None = None  # the accelerator asked for (a probe boot); None: the target's
    suffix: str | None = None  # the instance name's last part; None: random

    OPTIONS: ClassVar[tuple[str, ...]] = (
        "image_format", "channel", "kernel_args", "boot_args", "host_services",
        "metadata_delay_s",
    )  # fmt: skip
    """The options a driver may refuse (Target.REFUSALS)."""

    def asks(self, option: str, target: Target[Any]) -> bool:
        """Whether this request asks ``target`` for ``option`` beyond what it declares."""
        formats, channels = target.IMAGE_FORMATS, target.CHANNELS
        if option == "image_format":
            return formats is not None and self.image_format not in formats
        if option == "channel":
            return channels is not None and self.channel not in (None, *channels)
        if option == "kernel_args":
            return self.kernel_args is not None
        return bool(getattr(self, option))

    def message_fields(self, target: Target[Any]) -> dict[str, object]:
        """What a refusal's message may name: {name}, {image_format!r}, {boot_args}, ..."""
        return {
            "name": target.name,
            "driver": type(target).__name__,
            "image_format": self.image_format,
            "channel": self.channel,
            "kernel_args": self.kernel_args,
            "boot_args": " ".join(self.boot_args),
            "host_services": dict(self.host_services),
            "metadata_delay_s": self.metadata_delay_s,
        }


InstanceT = TypeVar("InstanceT", bound=Instance)


class Target(ABC, Generic[InstanceT]):
    """Where instances run. ``available()`` says whether it can run here, and if not, why.

    ``launch()`` is a template (as in openQA's backend base class, where start_vm calls
    do_start_vm): it settles the request, refuses what the driver declares it cannot do
    (REFUSALS, then ``_check()``), names the instance through the run, makes its work
    directory where the driver keeps files here, and undoes everything if the start fails.
    A driver writes ``_new_instance()`` and ``_start()``, and only the parts that differ."""

    SETTINGS: ClassVar[frozenset[str]] = frozenset()
    """The keys of a matrix target's ``settings:`` this driver reads; the matrix refuses others
    (a misspelt key would otherwise be ignored: lab.targets.registry passes these to lab.matrix)."""

    IMAGE_FORMATS: ClassVar[frozenset[str] | None] = None
    """The image formats the driver boots; None: any the boot loader comes in."""
    CHANNELS: ClassVar[frozenset[str] | None] = None
    """The context channels the driver delivers; None: the driver checks (the profile's)."""
    REFUSALS: ClassVar[Mapping[str, str]] = {
        "kernel_args": "{driver} has no direct kernel boot (kernel_args)",
        "boot_args": "{driver} cannot hand the guest boot options ({boot_args})",
        "host_services": "{driver} cannot forward host_services {host_services}",
        "metadata_delay_s": "{driver} runs no metadata service of its own to slow down",
    }
    """What the driver cannot do, by LaunchRequest.OPTIONS, in the order it refuses them: a
    message (str.format with LaunchRequest.message_fields()). A driver that says nothing
    refuses direct kernel boot, boot options, host services and a slowed metadata service:
    the default is loud, not pretending."""
    LOCAL_WORKDIR: ClassVar[bool] = False
    """Whether instances keep files on this host (disks, console log): launch() then makes
    their work directory (0711) and refuses one that exists."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.REFUSALS) - set(LaunchRequest.OPTIONS)
        if unknown:
            raise TypeError(f"{cls.__name__}.REFUSALS: no such launch option {sorted(unknown)}")
        for option, declared in (("image_format", cls.IMAGE_FORMATS), ("channel", cls.CHANNELS)):
            if declared is not None and option not in cls.REFUSALS:
                raise TypeError(f"{cls.__name__} limits {option} but says not why (REFUSALS)")

    def __init__(self, name: str, profile: Profile, settings: dict[str, str], run: Run) -> None:
        self.name = name
        self.profile = profile
        self.settings = settings
        self.run = run
        self.image_format: str | None = None
        """The matrix target's ``image_format:`` (lab.targets.registry sets it); None: the
        profile's own."""

    def format_for(self, profile: Profile | None = None, asked: str | None = None) -> str:
        """The image format a launch boots, settled here only: the one asked for, else the
        matrix target's, else the driver's one format (EC2 takes raw, vSphere an OVA,
        whatever the profile), else the profile's."""
        if asked:
            return asked
        if self.image_format:
            return self.image_format
        if self.IMAGE_FORMATS is not None and len(self.IMAGE_FORMATS) == 1:
            return next(iter(self.IMAGE_FORMATS))
        return (profile or self.profile).image_format

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

    # --- launching: the template ------------------------------------------------------------
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
        metadata_delay_s: float = 0,
    ) -> InstanceT:
        """Boot ``image`` with this target's (or the given) profile; the caller waits for markers.

        ``kernel_args`` switches to direct kernel boot with those extra arguments (a debugging
        aid: images are otherwise booted from disk or CD through the firmware).
        ``boot_args`` are per-instance boot options (``ucvm.version=1.1``) the platform hands
        the guest beside the image's own command line (SMBIOS OEM strings here).
        ``host_services`` maps a guest address (``169.254.169.100:80``) to a port on the host's
        127.0.0.1 that the guest reaches there (the OS repository).
        ``context`` is the user's contextualization (lab.build.context), delivered on the
        platform's ``channel`` (by default the profile's first) as the platform delivers it.
        ``metadata_delay_s`` slows every answer of a metadata service the driver runs itself
        (a fault test's slow cloud)."""
        settled = profile or self.profile
        return self.launch_request(
            LaunchRequest(
                image=image,
                image_format=self.format_for(settled, image_format),
                profile=settled,
                run_id=self.run.id,
                context=context,
                channel=channel,
                kernel_args=kernel_args,
                boot_args=tuple(boot_args),
                host_services=MappingProxyType(dict(host_services or {})),
                metadata_delay_s=metadata_delay_s,
            )
        )

    def launch_request(self, request: LaunchRequest) -> InstanceT:
        """What every launch does, once: refuse, name, make the work directory, build the
        instance, start it; whatever stops the start (an error, Ctrl-C), nothing of it may
        stay behind, and a failed clean-up is added to the error as a note."""
        for option, message in self.REFUSALS.items():
            if request.asks(option, self):
                raise TargetError(message.format(**request.message_fields(self)))
        self._check(request)
        name = self.run.resource_name(self.name, request.suffix or secrets.token_hex(3))
        workdir = self.run.dir / name
        # 0711: QEMU (libvirt-qemu) traverses it, lists nothing
        if self.LOCAL_WORKDIR and not make_dir(workdir):
            raise TargetError(f"{workdir} exists already: instance names are unique per run")
        instance = self._new_instance(name, request.profile, workdir)
        try:
            self._start(instance, request)
        except BaseException as error:
            raised = self._translate(error, instance)
            try:
                instance.destroy()
            except Exception as cleanup:
                raised.add_note(f"clean-up after the failed launch: {cleanup}")
            if raised is error:
                raise
            raise raised from error
        return instance

    # --- launching: what a driver writes ----------------------------------------------------
    def _check(self, request: LaunchRequest) -> None:
        """Refuse, before anything is named or made, what REFUSALS cannot say (the context's
        content, a channel of the profile); raises TargetError (or ContextError)."""

    @abstractmethod
    def _new_instance(self, name: str, profile: Profile, workdir: Path) -> InstanceT:
        """The driver's Instance, not started yet (destroy() must already work on it)."""

    @abstractmethod
    def _start(self, instance: InstanceT, request: LaunchRequest) -> None:
        """Make and start what ``instance`` runs on; launch_request() undoes it on failure."""

    def _translate(self, error: BaseException, instance: InstanceT) -> BaseException:
        """The error a failed start raises (a client library's becomes a TargetError here)."""
        return error
