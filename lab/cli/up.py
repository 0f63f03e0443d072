"""``ucvm-lab up TARGET`` and ``ucvm-lab down RUN``: one cell's instance, by hand.

``up`` boots what a suite's cell boots: the same boot loader image, the target's profile, the
run's OS repository (every loader and release, published as the session fixtures publish it:
lab.build.osrepo.lab_repo) served by nginx, and the version as a boot option (a boot cell), or
a user-data on a channel (a context cell: the repository also at the second address such
user-data names). It is a run of its own: it prints the run id, streams the serial console
with the phase markers highlighted, says how to reach the guest once it is `ready` (or has
failed), and on Ctrl-C, SIGTERM or SIGHUP destroys the instance, stops the server and removes
the run directory. ``down RUN`` asks that ``up`` to do so (SIGTERM) and then sweeps whatever
of the run is left (a killed ``up``, or a run ``ucvm-lab run --keep-failed`` kept), with the
sweeper's own per-run clean-up.

Bad input (an unknown target, one that cannot run here, a version the repository will not
have, a missing user-data file, a channel the profile lacks) is refused in one line, exit 2,
before anything is built, served or booted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.text import Text
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from lab import matrix
from lab.build import bootloader, rootfs
from lab.build import context as ctx
from lab.build.osrepo.keys import RepoError
from lab.build.osrepo.lab_repo import loader_builds, publish_run_repository
from lab.build.releases import Release, ReleaseError, load_releases
from lab.cli.common import REPO, error_exit, os_problem, out
from lab.observe import CONTEXT_STEP, FAILURE, MARKER, PANIC, READY, record_from_console
from lab.run import RUN_ID, Run, new_run_id, run_dir_problem, run_is_alive
from lab.runroot import RunRootError
from lab.services.base import ServiceError
from lab.services.repo import RepoServer, process_alive
from lab.services.sweep import sweep as sweep_services
from lab.targets.base import Instance, Target, TargetError
from lab.targets.libvirt import sweep
from lab.targets.profiles import PROFILES
from lab.targets.reach import kept, reach
from lab.targets.registry import make_target

SESSION_FILE = "up.json"  # in the run directory: the `up` process, for `down`
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_S = 0.2
DOWN_WAIT_S = 120.0  # an `up` cleans up in seconds; a domain that will not die takes longer
KILL_WAIT_S = 10.0
FAILURES = (
    RepoError, ReleaseError, bootloader.BuildError, ServiceError, TargetError, ctx.ContextError,
    RunRootError,
)  # fmt: skip


class BadInput(ValueError):
    """An argument `up` or `down` refuses: the message names it and the fix (exit 2)."""


@dataclass(frozen=True)
class UpRequest:
    """What `up` was asked for, checked: nothing is built, served or booted before this."""

    spec: matrix.Target
    target: Target[Any]
    releases: list[Release]
    version: str | None  # a boot option; None: the user-data's cvmfs_tag, else newest
    user_data: bytes | None
    user_data_path: Path | None
    channel: str | None  # with user-data only

    @property
    def boot_version(self) -> str | None:
        """The version asked for by boot option; None: the user-data's, as a context cell."""
        if self.version is None and self.user_data is not None:
            return None
        return self.version or "newest"

    @property
    def boot_args(self) -> list[str]:
        return [f"ucvm.version={self.boot_version}"] if self.boot_version else []


# --------------------------------------------------------------------------- checking


def settle(args: argparse.Namespace, lab: matrix.Matrix, run: Run) -> UpRequest:
    """The request, or BadInput naming the argument and the fix (TargetError: a host fault)."""
    try:
        spec = lab.target(args.target)
    except matrix.MatrixError as error:
        raise BadInput(f"TARGET {args.target!r}: {error}") from None
    target = make_target(spec, lab.settings, run)
    ok, why = target.available()
    if not ok:
        raise BadInput(
            f"TARGET {spec.name!r} cannot run here: {why}; `ucvm-lab targets` lists the "
            "targets that can"
        )
    try:
        releases = load_releases(REPO / "releases.yaml")
    except ReleaseError as error:
        raise BadInput(str(error)) from None
    if args.version is not None:
        check_version(args.version, releases)
    user_data = path = channel = None
    if args.user_data is not None:
        path = Path(args.user_data)
        user_data = read_user_data(path, PROFILES[spec.profile].platform)
        channel = check_channel(args.channel, target)
    elif args.channel is not None:
        raise BadInput(
            f"--channel {args.channel}: a channel carries user-data; give --user-data FILE too"
        )
    return UpRequest(spec, target, releases, args.version, user_data, path, channel)


def version_names(releases: list[Release]) -> tuple[list[str], list[str]]:
    """(branches, tags) the run's repository will have: it publishes every release."""
    branches = list(dict.fromkeys(release.branch for release in releases))
    return branches, [release.tag for release in releases]


def check_version(version: str, releases: list[Release]) -> None:
    branches, tags = version_names(releases)
    if version in ("newest", "previous", *branches, *tags):
        return
    raise BadInput(
        f"--version {version!r}: not in the repository the run publishes (releases.yaml); "
        f"ask for newest, previous, a branch ({', '.join(branches)}) or a tag ({', '.join(tags)})"
    )


def read_user_data(path: Path, platform: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadInput(
            f"--user-data {path}: {error.strerror}; give a user-data file (cloud-config, a MIME "
            "multi-part message, or a [ucernvm-begin] block)"
        ) from None
    try:
        ctx.check_user_data_size(platform, data, f"--user-data {path}")
    except ctx.ContextError as error:
        raise BadInput(str(error)) from None
    return data


def check_channel(asked: str | None, target: Target[Any]) -> str:
    """The channel the user-data travels on: the one asked for, else the profile's first."""
    profile = target.profile
    offered = [name for name in profile.channels if target.offers_channel(name)[0]]
    if not offered:
        raise BadInput(
            f"--user-data: the {profile.name} profile has no context channel this lab can "
            "deliver; drop --user-data, or pick a target whose profile has one"
        )
    channel = asked or offered[0]
    ok, why = target.offers_channel(channel)
    if not ok:
        raise BadInput(
            f"--channel {channel}: {why}; the {target.name} target offers {', '.join(offered)}"
        )
    return channel


# --------------------------------------------------------------------------- up


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """Ctrl-C, SIGTERM (`down`) and SIGHUP (a closed terminal) all raise KeyboardInterrupt,
    once: from then on they are ignored, so that nothing interrupts the clean-up."""

    def stop(signum: int, frame: FrameType | None) -> None:
        for number in SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {number: signal.signal(number, stop) for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def cmd_up(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    run = Run(new_run_id(), lab.settings.run_root)
    try:
        request = settle(args, lab, run)
    except BadInput as error:
        return error_exit("up", str(error), 2)
    except TargetError as error:  # the host is broken (libvirtd down): a fault, not input
        return error_exit("up", f"TARGET {args.target}: {error}", 1)
    with interrupts():
        try:
            return up(request, lab, run)
        except KeyboardInterrupt:
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                say(f"ucvm-lab up: run {run.id} is down: nothing of it is left")
            return 0
        except BadInput as error:  # found once the repository exists (after the clean-up)
            return error_exit("up", str(error), 2)
        except FAILURES as error:
            return error_exit("up", f"{error}; run {run.id} was cleaned up", 1)
        except OSError as error:
            return error_exit("up", f"{os_problem(error)}; run {run.id} was cleaned up", 1)


def up(request: UpRequest, lab: matrix.Matrix, run: Run) -> int:
    """Build (cached), publish, serve, launch, stream; everything goes when this returns."""
    say(f"[bold]ucvm-lab up[/] {request.spec.name}: building the boot loader and the releases "
        "(cached by input hash)")  # fmt: skip
    loader = bootloader.build()
    loaders = loader_builds(loader)
    artifacts = [rootfs.build_release(release) for release in request.releases]
    with contextlib.ExitStack() as stack:
        run.hold()
        stack.callback(run.release)  # last: the run directory goes with it
        write_session(run, request)
        say(f"[bold]run {run.id}[/]: `ucvm-lab down {run.id}` (or Ctrl-C here) destroys it")
        repository = publish_run_repository(run.dir, request.releases, artifacts, loaders)
        asked = request.boot_version
        if asked is not None:
            try:
                snapshot = repository.resolve(asked)
            except RepoError as error:
                raise BadInput(f"--version {asked!r}: {error}") from None
            say(f"version {asked} is {snapshot.tag} on branch {snapshot.branch}")
        server = stack.enter_context(RepoServer(repository.root, run.dir / "nginx-up"))
        say(f"repository served at {server.url} (access log {server.access_log})")
        instance = stack.enter_context(launch(request, loader, server, run))
        return follow(instance, request, run, lab.settings.boot_budget_s)


def launch(
    request: UpRequest, loader: bootloader.BootLoader, server: RepoServer, run: Run
) -> Instance:
    """As the suites launch: suites/conftest.py's launch_os (a boot cell), or
    suites/boot/test_context.py (a context cell: user-data on a channel)."""
    services = {bootloader.GUEST_REPO_ADDRESS: server.port}
    context = None
    if request.user_data is not None:
        services[ctx.CONTEXT_REPO_ADDRESS] = server.port
        context = ctx.Context(
            instance_id=f"i-{run.id}",
            hostname=run.resource_name(request.spec.name),
            user_data=request.user_data,
        )
    asked = " ".join(request.boot_args) or "the version the user-data names (cvmfs_tag)"
    via = f", user-data {request.user_data_path} on {request.channel}" if context else ""
    say(f"launching {request.spec.name} ({request.target.profile.name} profile, "
        f"{request.target.format_for()} image): {asked}{via}")  # fmt: skip
    instance: Instance = request.target.launch(
        loader, context, channel=request.channel, boot_args=request.boot_args,
        host_services=services,
    )  # fmt: skip
    return instance


def write_session(run: Run, request: UpRequest) -> None:
    """What `down` needs to stop this process: its pid and start time (a reused pid is not it)."""
    session = {"pid": os.getpid(), "start": process_start(os.getpid()), "target": request.spec.name}
    (run.dir / SESSION_FILE).write_text(json.dumps(session))


def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def say(message: str) -> None:
    out.print(message, highlight=False)
    out.file.flush()


def follow(instance: Instance, request: UpRequest, run: Run, budget_s: float) -> int:
    """Stream the console until the guest stops (1) or a signal ends the session."""
    say(f"instance {instance.name}, console {console_path(instance)}; streaming it:")
    shown, partial, warned = 0, "", False
    deadline = time.monotonic() + budget_s
    while True:
        text = instance.console()
        fresh, shown = partial + text[shown:], len(text)
        *lines, partial = fresh.split("\n")
        for line in lines:
            line = line.rstrip("\r")
            out.print(highlighted(line), highlight=False, soft_wrap=True)
            if re.search(READY, line) or re.search(FAILURE, line):
                announce(instance, request, run, ready=bool(re.search(READY, line)))
        out.file.flush()
        if not instance.is_running():
            say(f"[red]the guest {instance.name} stopped[/]; cleaning up run {run.id}")
            return 1
        if not warned and time.monotonic() > deadline:
            warned = True
            say(f"[yellow]no `ready` within the boot budget ({budget_s:g} s): the suite would "
                "judge this a hang[/]; the guest stays up")  # fmt: skip
        time.sleep(POLL_S)


def highlighted(line: str) -> Text:
    """A console line as rich text: the guest's colours, and the lab's markers stand out."""
    text = Text.from_ansi(line)
    plain = text.plain
    if marker := MARKER.match(plain):
        failed = "status=failed" in marker.group("rest")
        style = "bold red" if failed else "bold green" if marker["name"] == "ready" else "bold cyan"
        text.stylize(style)
    elif CONTEXT_STEP.match(plain):
        text.stylize("yellow")
    elif PANIC.match(plain):
        text.stylize("bold red")
    return text


def announce(instance: Instance, request: UpRequest, run: Run, ready: bool) -> None:
    """The phases so far, and every way to reach the guest."""
    time.sleep(0.0 if ready else 0.5)  # the rest of a failure's message
    record = record_from_console(
        instance.current_boot_console(), instance.current_boot_timeline(),
        instance=instance.name, accel=instance.accel,
    )  # fmt: skip
    out.print(record.phase_table(), highlight=False, markup=False)
    say("[bold green]the guest is ready[/]" if ready else "[bold red]the boot failed[/]: its "
        "shell waits on the console channel")  # fmt: skip
    for line in access_lines(instance, request, run):
        out.print(line, highlight=False, markup=False)
    out.file.flush()


def console_path(instance: Instance) -> str:
    log = getattr(instance, "console_log", None)
    return str(log) if log else "(the driver's console)"


def access_lines(instance: Instance, request: UpRequest, run: Run) -> list[str]:
    """How to reach the guest: the console, the channel shell, SSH where there is a forward."""
    found = reach(instance, run.dir)
    return [
        f"reach the guest of run {run.id}:",
        *found.lines(user_data_user(request.user_data or b"")),
        f"  down     Ctrl-C here, or: ucvm-lab down {run.id}",
    ]


def user_data_user(user_data: bytes) -> str | None:
    """The first user a cloud-config's `users:` creates, if the user-data is one."""
    if not user_data.startswith(b"#cloud-config"):
        return None
    try:
        config = YAML(typ="safe").load(user_data)
    except YAMLError:
        return None
    users = config.get("users") if isinstance(config, dict) else None
    for user in users if isinstance(users, list) else []:
        name = user.get("name") if isinstance(user, dict) else user
        if isinstance(name, str) and name != "default":
            return name
    return None


# --------------------------------------------------------------------------- down


def cmd_down(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    try:
        return down(args.run, lab)
    except BadInput as error:
        return error_exit("down", str(error), 2)
    except RunRootError as error:
        return error_exit("down", f"{error}; nothing was removed", 2)
    except TargetError as error:
        return error_exit("down", f"{error}; run {args.run} may be left: retry", 1)


def down(run_id: str, lab: matrix.Matrix) -> int:
    if not RUN_ID.fullmatch(run_id):
        raise BadInput(
            f"RUN {run_id!r}: not a run id (10 digits and 4 hex digits); give the id "
            "`ucvm-lab up` printed (or one `ucvm-lab run --keep-failed` listed)"
        )
    root = lab.settings.run_root
    run_dir = root / run_id
    there = os.path.lexists(run_dir)
    if there and (problem := run_dir_problem(run_dir)):
        raise BadInput(f"RUN {run_id}: {run_dir}: {problem}: not a run of this lab; left alone")
    lines = []
    if there and run_is_alive(run_dir):
        lines.append(stop_session(run_id, run_dir))
    # The sweeper's per-run clean-up: the services first (found by their files), then the
    # domains and the run's directory.
    lines += sweep_services(root, only=run_id)
    lines += sweep(lab.settings.libvirt_uri, root, only=run_id)
    if not there and not lines:
        raise BadInput(
            f"RUN {run_id}: no such run under {root}, and no domain of it: it is down already, "
            "or not an id `ucvm-lab up` printed"
        )
    out.print("\n".join(lines) + f"\nrun {run_id} is down", highlight=False)
    return 0


def stop_session(run_id: str, run_dir: Path) -> str:
    """Ask the run's `up` to clean up (SIGTERM) and wait for it; kill it if it hangs."""
    try:
        session = json.loads((run_dir / SESSION_FILE).read_text())
        pid = int(session["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInput(
            f"RUN {run_id} is alive and is not an `ucvm-lab up` session (a test run, `ucvm-lab "
            "repo serve`): stop that process instead"
        ) from None
    if not process_alive(pid) or process_start(pid) != session.get("start"):
        raise BadInput(
            f"RUN {run_id} is alive, but its `up` (pid {pid}) is gone: another process holds "
            "the run; stop that process instead"
        )
    os.kill(pid, signal.SIGTERM)
    if wait_gone(pid, DOWN_WAIT_S):
        return f"ucvm-lab up (pid {pid}) destroyed what it made"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_gone(pid, KILL_WAIT_S)
    return f"ucvm-lab up (pid {pid}) did not end in {DOWN_WAIT_S:g} s: killed it; sweeping"


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


# --------------------------------------------------------------------------- kept runs


def list_kept(run_root: Path, run_id: str) -> None:
    """What `ucvm-lab run --keep-failed` kept of run ``run_id``, and how to reach each."""
    found = kept(run_root / run_id)
    if not found:
        say("--keep-failed: no failed cell left an instance running; nothing was kept")
        return
    say(f"[bold]--keep-failed[/]: run {run_id} keeps {len(found)} instance(s) of failed cells, "
        "with their repository server:")  # fmt: skip
    for item in found:
        out.print(f"{item.instance} ({item.test})", highlight=False, markup=False)
        out.print("\n".join(item.lines()), highlight=False, markup=False)
    say(f"`ucvm-lab down {run_id}` removes them (or `ucvm-lab sweep`, with every dead run's)")


# --------------------------------------------------------------------------- the parser


def add_up_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    starting = commands.add_parser(
        "up", help="boot one cell's instance by hand, until Ctrl-C or `ucvm-lab down RUN`"
    )
    starting.add_argument("target", metavar="TARGET", help="a target of the matrix")
    starting.add_argument(
        "--version", help="the OS version: a tag, a branch, newest, previous (default: newest)"
    )
    starting.add_argument(
        "--user-data", metavar="FILE", help="boot with this user-data, as a context cell does"
    )
    starting.add_argument(
        "--channel", help="the context channel of the profile (default: its first)"
    )
    starting.set_defaults(func=cmd_up)
    stopping = commands.add_parser("down", help="destroy an `up` session or a kept run")
    stopping.add_argument("run", metavar="RUN", help="the run id `up` printed")
    stopping.set_defaults(func=cmd_down)
