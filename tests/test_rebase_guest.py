"""Tests of suites/rebase/guest.py on the host: the files pushed and fetched through a command
channel (a local shell stands in for the guest's), which local packages and id collisions a pair
has (from releases.yaml), `apt-get check` over a status file, and the R8 verdict on canned
guest answers."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from lab.artifacts import ArtifactStore
from lab.build import fixture_debs
from lab.targets.base import CommandResult
from suites.rebase import guest

ALICE = guest.LOCAL_USER


class LocalShell:
    """An Instance whose run() is bash on the host; it records each command."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 60) -> CommandResult:
        self.commands.append(command)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        return CommandResult(command, done.returncode, done.stdout + done.stderr)


class Canned:
    """An Instance that answers each command from a table (the first key it starts with)."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers

    def run(self, command: str, timeout: float = 60) -> CommandResult:
        for start, (code, output) in self.answers.items():
            if command.startswith(start):
                return CommandResult(command, code, output)
        return CommandResult(command, 127, f"canned: no answer for {command!r}")


def test_a_deb_goes_in_by_chunks_and_comes_back_the_same(tmp_path: Path) -> None:
    shell = LocalShell()
    store = ArtifactStore(tmp_path / "store")
    data = fixture_debs.fixture_deb("ucvm-fixture-svc=3.0", store).read_bytes()
    data += bytes(range(256)) * 12  # more than one chunk
    dest = str(tmp_path / "stage/x.deb")
    guest.push_file(shell, data, dest)  # type: ignore[arg-type]
    assert Path(dest).read_bytes() == data and not Path(dest + ".b64").exists()
    chunks = [c for c in shell.commands if c.startswith("printf %s ")]
    assert len(chunks) == -(-len(base64.b64encode(data)) // guest.CHUNK) >= 2
    assert all(len(c) <= guest.CHUNK + 200 for c in shell.commands)
    assert guest.fetch_file(shell, dest) == data  # type: ignore[arg-type]
    assert guest.fetch_file(shell, str(tmp_path / "absent")) is None  # type: ignore[arg-type]


def test_a_push_that_arrives_damaged_fails_naming_the_hash(tmp_path: Path) -> None:
    answers = {"mkdir": (0, ""), "printf": (0, ""), "base64 -d": (0, "0000  x.deb\n")}
    with pytest.raises(AssertionError, match="expected SHA-256 "):
        guest.push_file(Canned(answers), b"abc", "/run/x.deb")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "local"),
    [("1.0", ["ucvm-fixture-local=1.0", "ucvm-fixture-svc=1.0"]),
     ("1.1", ["ucvm-fixture-local=1.0", "ucvm-fixture-svc=1.0"]),
     ("1.2", ["ucvm-fixture-local=1.0"])],  # 1.2 ships ucvm-fixture-svc itself
)  # fmt: skip
def test_the_local_packages_are_those_from_does_not_ship(source: str, local: list[str]) -> None:
    assert [deb.key for deb in guest.local_packages(source)] == local


def state(uid: int, gid: int, source: str = "1.1") -> guest.LocalState:
    return guest.LocalState(guest.local_packages(source), uid, gid, b"")


def test_the_collisions_are_the_ids_the_new_release_s_accounts_take() -> None:
    svc, svc2 = fixture_debs.UCVMSVC, fixture_debs.UCVMSVC2
    assert guest.collisions(state(1000, 1000), "1.2") == [("uid", 1000, svc), ("gid", 1000, svc)]
    assert guest.collisions(state(1001, 1001, "1.2"), "2.0-dev") == [
        ("uid", 1001, svc2), ("gid", 1001, svc2)
    ]  # fmt: skip
    assert guest.collisions(state(1000, 1000), "1.1") == []
    kept, replaced = guest.kept_and_replaced(state(1000, 1000), "1.2")
    assert [deb.key for deb in kept] == ["ucvm-fixture-local=1.0"]
    assert replaced == ["ucvm-fixture-svc"]


def moved_answers() -> dict[str, tuple[int, str]]:
    """A guest after 1.1 -> 1.2 where alice moved from 1000 to 1001."""
    return {
        f"id -u {ALICE}": (0, "1001\n1001\n"),
        f"cat {guest.IDMAP}": (0, "uid 1000 1001 alice 1.1 1.2\ngid 1000 1001 alice 1.1 1.2\n"),
        "getent passwd 1000": (0, "ucvmsvc\n"),
        "getent group 1000": (0, "ucvmsvc\n"),
        "stat -c '%U:%G %u:%g %n'": (0, "".join(
            f"alice:alice 1001:1001 {p}\n"
            for p in ("/home/alice", "/home/alice/notes", "/var/lib/alice-data/db"))),
        "stat -c %U:%G /var/lib/ucvmsvc": (0, "ucvmsvc:ucvmsvc\n"),
    }  # fmt: skip


def r8(answers: dict[str, tuple[int, str]]) -> str | None:
    return guest.accounts_verdict(Canned(answers), state(1000, 1000), "1.1", "1.2")  # type: ignore[arg-type]


def test_r8_holds_when_her_ids_moved_her_files_followed_and_the_idmap_says_so() -> None:
    assert r8(moved_answers()) is None


@pytest.mark.parametrize(
    ("key", "answer", "found"),
    [
        (f"id -u {ALICE}", (0, "1000\n1000\n"), "uid 1000: alice has 1000"),
        (f"id -u {ALICE}", (1, "id: 'alice': no such user\n"), "no local user alice"),
        (f"cat {guest.IDMAP}", (1, "cat: no such file\n"), "lacks `uid 1000 1001 alice 1.1 1.2`"),
        (f"cat {guest.IDMAP}", (0, "uid 1000 1001 alice\n"), "lacks `uid 1000 1001 alice 1.1"),
        ("stat -c '%U:%G %u:%g %n'", (0, "1000:1000 1001:1001 /home/alice\n"), "her files"),
        ("stat -c %U:%G /var/lib/ucvmsvc", (0, "alice:alice\n"), "not ucvmsvc's (chowned?)"),
    ],
)
def test_r8_fails_saying_what_it_found(key: str, answer: tuple[int, str], found: str) -> None:
    answers = moved_answers()
    answers[key] = answer
    assert found in (r8(answers) or "")


def status(*stanzas: str) -> bytes:
    common = "Status: install ok installed\nArchitecture: all\nMaintainer: x <x@x>\n"
    return "".join(f"{s}{common}Description: x\n\n" for s in stanzas).encode()


def test_apt_get_check_passes_a_closed_status_and_names_a_missing_dependency() -> None:
    good = status("Package: a\nVersion: 1\nDepends: b (>= 2)\n", "Package: b\nVersion: 2\n")
    assert guest.apt_get_check(good) is None
    broken = status("Package: a\nVersion: 1\nDepends: b (>= 3)\n", "Package: b\nVersion: 2\n")
    verdict = guest.apt_get_check(broken) or ""
    assert verdict.startswith("apt-get check exit 100: ") and " a : Depends: b (>= 3)" in verdict


def test_the_status_diff_lists_added_removed_and_changed_packages() -> None:
    before = status("Package: a\nVersion: 1\n", "Package: b\nVersion: 1\n")
    after = status("Package: a\nVersion: 2\n", "Package: c\nVersion: 1\n")
    assert guest.status_diff(before, after) == "+ c 1\n- b 1\n~ a 1 -> 2\n"
