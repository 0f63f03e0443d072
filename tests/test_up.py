"""`ucvm-lab up` and `ucvm-lab down`: one cell's instance by hand, and `--keep-failed`.

The refusals run the command line as a user does, with a run root of their own, and check
that nothing was made. `down` is checked on dead runs that own a real nginx (what a killed
`up` or a kept run leaves): it removes that run's and nothing of another's. The boots
(marked `boot`) run `ucvm-lab up kvm` for real and end it with Ctrl-C (SIGINT) or with
`ucvm-lab down RUN`, and keep a failed cell with `--keep-failed`; each then looks for the
run's libvirt domain, its QEMU and nginx processes and its directory, which were there
while it ran.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import matrix
from lab.build.osrepo.repository import Repository
from lab.cli.up import highlighted, user_data_user
from lab.run import Run, new_run_id, run_is_alive
from lab.services.repo import process_alive
from lab.targets.base import Instance
from lab.targets.libvirt.host import connect
from lab.targets.reach import kept
from tests.commands import ucvm_lab

REPO = Path(__file__).resolve().parent.parent
RUN_LINE = re.compile(r"^run ([0-9]{10}[0-9a-f]{4}): `ucvm-lab down", re.MULTILINE)
UP_BUDGET_S = 900  # the repository's publish, then a boot under TCG on a busy host
DOWN_BUDGET_S = 180


@pytest.fixture
def own_root(tmp_path: Path) -> dict[str, str]:
    """The environment for a command line whose runs live under a root of the test's own."""
    return os.environ | {"UCVM_RUN_ROOT": str(tmp_path / "runs")}


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["nope"], ["TARGET 'nope'", "unknown target", "known targets: kvm"]),
        (["xen"], ["TARGET 'xen' cannot run here", "`ucvm-lab targets`"]),
        (["kvm", "--version", "9.9"], ["--version '9.9'", "ask for newest, previous", "1.1"]),
        (["kvm", "--version", ""], ["--version ''", "ask for newest"]),
        (["kvm", "--user-data", "/nonexistent/ud"], ["--user-data /nonexistent/ud", "No such"]),
        (["kvm", "--user-data", "{ud}", "--channel", "ec2-imds"],
         ["--channel ec2-imds", "no channel 'ec2-imds'", "offers nocloud"]),
        (["vmware", "--user-data", "{ud}", "--channel", "guestinfo"],
         ["--channel guestinfo", "VMware Tools", "offers ovf"]),
        (["kvm", "--channel", "nocloud"], ["--channel nocloud", "give --user-data FILE"]),
        (["ec2", "--user-data", "{big}"], ["--user-data", "over Amazon EC2's user-data limit"]),
    ],
    ids=["target", "unavailable", "version", "empty-version", "user-data", "channel",
         "undeliverable", "channel-alone", "user-data-size"],
)  # fmt: skip
def test_bad_input_is_refused_in_one_line_before_anything_is_made(
    args: list[str], names: list[str], tmp_path: Path, own_root: dict[str, str]
) -> None:
    (tmp_path / "ud").write_text("#cloud-config\nhostname: x\n")
    (tmp_path / "big").write_bytes(b"#cloud-config\n" + b"#" * (16 * 1024))
    args = [a.format(ud=tmp_path / "ud", big=tmp_path / "big") for a in args]
    result = ucvm_lab("up", *args, env=own_root)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ucvm-lab up: "), result.stderr
    for name in names:
        assert name in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists(), "a refused `up` made its run"


@pytest.mark.parametrize(
    ("run", "names"),
    [
        ("not-a-run", ["RUN 'not-a-run': not a run id", "`ucvm-lab up` printed"]),
        (new_run_id(), ["no such run under", "down already"]),
    ],
    ids=["malformed", "unknown"],
)
def test_down_refuses_what_is_no_run(run: str, names: list[str], own_root: dict[str, str]) -> None:
    result = ucvm_lab("down", run, env=own_root)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("ucvm-lab down: ")
    for name in names:
        assert name in result.stderr


def test_down_leaves_a_live_run_that_is_no_up_session_alone(tmp_path: Path) -> None:
    run = Run(new_run_id(), tmp_path / "runs").hold()  # a test session's run, say
    try:
        (run.dir / "work").write_text("in use")
        result = ucvm_lab("down", run.id, env=os.environ | {"UCVM_RUN_ROOT": str(run.root)})
        assert result.returncode == 2
        assert "is alive and is not an `ucvm-lab up` session" in result.stderr
        assert (run.dir / "work").read_text() == "in use"
    finally:
        run.release()


def dead_run_with_server(root: Path, repo: Path) -> tuple[str, int]:
    """A run whose process died and left its nginx running (outlive: as `--keep-failed`
    starts it; a killed `up`'s dies with it): (run id, nginx pid)."""
    run_id = new_run_id()
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from lab.run import Run\nfrom lab.services.repo import RepoServer\n"
        "run = Run(sys.argv[1], Path(sys.argv[2])).hold()\n"
        "server = RepoServer(Path(sys.argv[3]), run.dir / 'nginx-1', outlive=True).start()\n"
        "(run.dir / 'ucvm-x-kvm-1').mkdir()\n"
        "print(server.pid)\n"
    )  # it exits without releasing the run: the run is dead, its server is not
    done = subprocess.run(
        [sys.executable, "-c", code, run_id, str(root), str(repo)],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return run_id, int(done.stdout.strip())


def test_down_sweeps_that_dead_run_and_nothing_of_another(tmp_path: Path) -> None:
    repository = Repository(tmp_path / "repo")
    repository.init("down-test", default_branch="prod")
    root = tmp_path / "runs"
    gone, gone_nginx = dead_run_with_server(root, repository.root)
    other, other_nginx = dead_run_with_server(root, repository.root)
    env = os.environ | {"UCVM_RUN_ROOT": str(root)}
    try:
        assert process_alive(gone_nginx) and process_alive(other_nginx)
        assert not run_is_alive(root / gone)
        result = ucvm_lab("down", gone, env=env)
        assert result.returncode == 0, result.stderr
        assert f"nginx {gone_nginx}" in result.stdout and f"files {root / gone}" in result.stdout
        assert f"run {gone} is down" in result.stdout
        assert not process_alive(gone_nginx) and not (root / gone).exists()
        assert process_alive(other_nginx) and (root / other).is_dir(), "down took another run's"
        again = ucvm_lab("down", gone, env=env)
        assert again.returncode == 2 and "down already" in again.stderr
    finally:
        ucvm_lab("down", other, env=env)
    assert not process_alive(other_nginx) and not (root / other).exists()


# --------------------------------------------------------------------------- output


def test_markers_stand_out_on_the_streamed_console() -> None:
    def styles(line: str) -> set[str]:
        return {str(span.style) for span in highlighted(line).spans}

    assert styles("ucvm: phase=ready t=27.10 os=1.1 units_failed=0") == {"bold green"}
    assert styles("ucvm: phase=network t=3.20 driver=virtio_net") == {"bold cyan"}
    assert styles("ucvm: phase=repo t=4.00 status=failed reason=unreachable") == {"bold red"}
    assert styles("ucvm: context step=hostname status=applied value=x") == {"yellow"}
    assert styles("Kernel panic - not syncing: VFS") == {"bold red"}
    assert styles("[  OK  ] Started some unit.") == set()
    assert styles("a line that says ucvm: phase=ready t=1 in the middle") == set()  # forgery
    assert highlighted("\x1b[0;32m  OK  \x1b[0m done").plain == "  OK   done"  # the guest's colour


def test_the_ssh_user_is_the_one_the_cloud_config_creates() -> None:
    assert user_data_user(b"#cloud-config\nusers:\n  - default\n  - name: alice\n") == "alice"
    assert user_data_user(b"#cloud-config\nusers: [bob]\n") == "bob"
    assert user_data_user(b"#cloud-config\nhostname: x\n") is None
    assert user_data_user(b"#!/bin/sh\necho hi\n") is None
    assert user_data_user(b"#cloud-config\nusers: [\n") is None  # not YAML: no guess


# --------------------------------------------------------------------------- real boots


class Output:
    """A process's output, read as it comes (a thread), searched for what should appear."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.text = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.text += line

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.text, re.MULTILINE)):
            if self.process.poll() is not None:
                self._reader.join(5)
                found = re.search(pattern, self.text, re.MULTILINE)
                if found:
                    return found
                pytest.fail(f"`up` exited ({self.process.returncode}) before {pattern!r}:\n"
                            f"{self.text[-4000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} within {timeout:g} s:\n{self.text[-4000:]}")
            time.sleep(0.5)
        return found


@pytest.fixture
def up_session() -> Iterator[Callable[..., Output]]:
    """``start(*args)``: `ucvm-lab up` in a process of its own, its output followed; ended
    (SIGINT) if a test leaves it running."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Output:
        process = subprocess.Popen(
            [sys.executable, "-m", "lab.cli", "up", *args], cwd=REPO, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        started.append(process)
        return Output(process)

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(DOWN_BUDGET_S)
            except subprocess.TimeoutExpired:
                process.kill()


def leftovers(lab_matrix: matrix.Matrix, run_id: str) -> list[str]:
    """What of run ``run_id`` exists: its domains, processes naming it, its directory."""
    found = [
        f"domain {domain.name()}"
        for domain in connect(lab_matrix.settings.libvirt_uri).listAllDomains()
        if domain.name().startswith(f"ucvm-{run_id}-")
    ]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(run_id.encode() in arg for arg in argv):
                found.append(f"process {entry.name}: {b' '.join(argv)[:160]!r}")
    if (lab_matrix.settings.run_root / run_id).exists():
        found.append(f"directory {lab_matrix.settings.run_root / run_id}")
    return found


def kinds(found: list[str]) -> set[str]:
    text = "\n".join(found)
    return {kind for kind in ("domain", "qemu", "nginx", "directory") if kind in text}


@pytest.mark.boot
def test_up_boots_the_cell_to_ready_and_ctrl_c_leaves_nothing(
    up_session: Callable[..., Output], lab_matrix: matrix.Matrix
) -> None:
    session = up_session("kvm", "--version", "1.1")
    run_id = session.wait_for(RUN_LINE.pattern, 300).group(1)
    session.wait_for(r"^ucvm: phase=ready t=\S+ .*os=1\.1", UP_BUDGET_S)
    session.wait_for(r"^  down     Ctrl-C here, or: ucvm-lab down " + run_id, 30)
    text = session.text
    assert "version 1.1 is 1.1 on branch prod" in text
    assert "the guest is ready" in text
    assert re.search(r"^outcome: ready after [\d.]+ s host time", text, re.MULTILINE)
    assert re.search(r"^  console  tail -f \S+/console\.log$", text, re.MULTILINE)
    assert re.search(r"^  shell    \(cat \S+\.channel-key; cat\) \| socat - UNIX-CONNECT:\S+$",
                     text, re.MULTILINE)  # fmt: skip
    assert "ssh      none: launched without user-data" in text
    running = leftovers(lab_matrix, run_id)
    assert kinds(running) == {"domain", "qemu", "nginx", "directory"}, running  # the check sees

    session.process.send_signal(signal.SIGINT)
    assert session.process.wait(DOWN_BUDGET_S) == 0, session.text[-3000:]
    session.wait_for(rf"ucvm-lab up: run {run_id} is down", 10)
    assert leftovers(lab_matrix, run_id) == []


def channel_command(text: str, command: str, timeout: float = 60) -> str:
    """Run ``command`` in the guest through the shell line `up` printed: its key file and
    socket, as `(cat KEY; cat) | socat - UNIX-CONNECT:SOCKET` does."""
    line = re.search(r"^  shell    \(cat (\S+); cat\) \| socat - UNIX-CONNECT:(\S+)$", text,
                     re.MULTILINE)  # fmt: skip
    assert line, text[-2000:]
    key, path = Path(line.group(1)).read_text(), line.group(2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.connect(path)
        channel.settimeout(timeout)
        channel.sendall(f"{key.strip()}\n{command}; echo __done__\n".encode())
        received = b""
        while b"__done__" not in received:
            chunk = channel.recv(65536)
            assert chunk, f"the channel closed: {received!r}"
            received += chunk
    return received.decode(errors="replace").split("__done__")[0]


@pytest.mark.boot
def test_down_from_another_terminal_ends_the_up_session(
    up_session: Callable[..., Output], lab_matrix: matrix.Matrix
) -> None:
    session = up_session("kvm")
    run_id = session.wait_for(RUN_LINE.pattern, 300).group(1)
    newest = session.wait_for(r"^version newest is (\S+) on branch prod", 300).group(1)
    session.wait_for(r"^  down     Ctrl-C here", UP_BUDGET_S)
    release = channel_command(session.text, "grep ^release= /etc/ucvm-release")
    assert release.strip() == f"release={newest}", "the printed shell does not reach the guest"
    assert kinds(leftovers(lab_matrix, run_id)) == {"domain", "qemu", "nginx", "directory"}

    down = ucvm_lab("down", run_id)
    assert down.returncode == 0, down.stderr
    assert f"ucvm-lab up (pid {session.process.pid}) destroyed what it made" in down.stdout
    assert f"run {run_id} is down" in down.stdout
    assert session.process.wait(30) == 0
    assert leftovers(lab_matrix, run_id) == []


@pytest.mark.boot
def test_keep_failed_keeps_a_failed_cells_instance_until_down(
    lab_matrix: matrix.Matrix, tmp_path: Path
) -> None:
    """A boot cell that fails (a boot budget of 3 s: a hang, as the suite judges it) keeps its
    instance and its nginx after pytest has ended; `down RUN` then removes them."""
    run_id = new_run_id()
    env = os.environ | {"UCVM_RUN_ID": run_id, "UCVM_BOOT_BUDGET_S": "3",
                        "UCVM_TARGETS": "kvm", "UCVM_VERSIONS": "newest"}  # fmt: skip
    try:
        cell = subprocess.run(
            [sys.executable, "-m", "pytest", "suites/boot/test_boot.py", "-p", "no:cacheprovider",
             "-q", "--keep-failed", f"--alluredir={tmp_path / 'results'}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=UP_BUDGET_S,
        )  # fmt: skip
        assert cell.returncode == 1 and "1 failed" in cell.stdout, cell.stdout[-3000:]
        run_dir = lab_matrix.settings.run_root / run_id
        [instance] = kept(run_dir)
        assert "test_boots_version_to_ready[kvm-newest]" in instance.test
        assert instance.instance.startswith(f"ucvm-{run_id}-kvm-")
        assert not run_is_alive(run_dir), "pytest ended: the run is dead, its instance kept"
        domain = connect(lab_matrix.settings.libvirt_uri).lookupByName(instance.instance)
        assert domain.isActive()
        assert kinds(leftovers(lab_matrix, run_id)) == {"domain", "qemu", "nginx", "directory"}
        assert json.loads((run_dir / "kept" / f"{instance.instance}.json").read_text())["test"]
    finally:
        down = ucvm_lab("down", run_id)
    assert down.returncode == 0, down.stderr
    assert leftovers(lab_matrix, run_id) == []


def test_an_instance_held_for_keep_failed_is_not_destroyed_by_its_with_block(
    tmp_path: Path,
) -> None:
    """Run.held defers the ``with`` block's destroy (what keep_failed decides on at the end)."""

    class Recorded(Instance):
        destroyed = False

        def console(self) -> str:
            return ""

        def is_running(self) -> bool:
            return not self.destroyed

        def destroy(self) -> None:
            self.destroyed = True

    class Owner:
        run = Run(new_run_id(), tmp_path)

    owner = Owner()
    owner.run.held = []
    with Recorded("held", owner, None, tmp_path) as held:  # type: ignore[arg-type]
        pass
    assert owner.run.held == [held] and not held.destroyed
    owner.run.held = None
    with Recorded("plain", owner, None, tmp_path) as plain:  # type: ignore[arg-type]
        pass
    assert plain.destroyed
