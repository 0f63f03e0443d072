"""The rebase's rules (lab/build/initramfs/rebase, rebase-accounts, rebase-dpkg) in busybox sh on
the host, with nothing but busybox's applets on PATH: host trees under tmp_path stand for the old
snapshot (BASE), the old upper layer (LOCAL, whiteouts as 0:0 character devices) and the new
snapshot (UPSTREAM); the functions build the new upper layer (OUT) and the log.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from lab import observe

INITRAMFS = Path(observe.__file__).parent / "build" / "initramfs"
REBASE_FILES = [INITRAMFS / name for name in ("rebase", "rebase-accounts", "rebase-dpkg")]
RELEASE_ROOTS = Path("/var/cache/ucvm-lab")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and owners need root")


class Rebase:
    """BASE, LOCAL, UPSTREAM and OUT under ``root``, and the functions run on them."""

    def __init__(self, root: Path) -> None:
        busybox = shutil.which("busybox")
        if busybox is None:
            pytest.skip("busybox is not installed")
        self.busybox, self.root = busybox, root
        self.bin = root / "bin"
        self.bin.mkdir()
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
        for applet in applets.stdout.split():
            (self.bin / applet).symlink_to(busybox)
        self.base, self.local, self.up = root / "base", root / "local", root / "up"
        self.out, self.log, self.idmap = root / "out", root / "rebase.log", root / "idmap"
        for tree in (self.base, self.local, self.up, self.out):
            tree.mkdir()

    def put(self, tree: Path, path: str, text: str = "", mode: int = 0o644, owner: int = 0,
            group: int | None = None) -> Path:  # fmt: skip
        file = tree / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
        os.chown(file, owner, owner if group is None else group)
        file.chmod(mode)
        return file

    def whiteout(self, path: str) -> None:
        node = self.local / path.lstrip("/")
        node.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(0, 0))

    def everywhere(self, path: str, base: str, up: str | None, local: str | None) -> None:
        # PATH in BASE, UPSTREAM and LOCAL with these contents (None: absent)
        self.put(self.base, path, base)
        if up is not None:
            self.put(self.up, path, up)
        if local is not None:
            self.put(self.local, path, local)

    def sh(self, script: str) -> str:
        source = "\n".join(f". {path}" for path in REBASE_FILES)
        result = subprocess.run(
            [self.busybox, "sh", "-c", f"{source}\n{script}"],
            capture_output=True, text=True, timeout=60,
            env={"PATH": str(self.bin), "TMPDIR": str(self.root)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + result.stdout
        return result.stdout

    def run(self, *steps: str) -> None:  # the functions (by default all, in phase_rebase's order)
        trees = f"{self.base} {self.local} {self.up} {self.out}"
        calls = {
            "layers": f"rebase_layers {trees} {self.log}",
            "accounts": f"rebase_accounts {trees} {self.log} {self.idmap}",
            "chown": f"rebase_chown {self.out} {self.idmap} {self.log}",
            "dpkg": f"rebase_dpkg {trees} {self.log}",
        }
        self.sh(" && ".join(calls[step] for step in steps or calls))

    def fresh(self) -> None:  # what the caller does before a run: OUT and the idmap made empty
        shutil.rmtree(self.out)
        self.out.mkdir()
        self.idmap.write_text("")

    def lines(self) -> list[list[str]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [line.split("\t") for line in text.splitlines()]

    def decision(self, path: str) -> tuple[str, str]:
        found = [(a, detail) for a, where, detail in self.lines() if where == path and a != "warn"]
        assert found, f"no decision for {path} in:\n{self.log.read_text()}"
        return found[-1]

    def counts(self) -> dict[str, int]:
        fields = self.sh(f"rebase_counts {self.log}").split()
        return {key: int(value) for key, value in (field.split("=") for field in fields)}


@pytest.fixture
def rb(tmp_path: Path) -> Rebase:
    return Rebase(tmp_path)


def listing(tree: Path, written: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Each entry of ``tree``: type and mode, owner, content (or target, or rdev), and the mtime
    of what is neither a directory nor ``written`` (new files, not copies)."""
    entries: dict[str, tuple[object, ...]] = {}
    for path in sorted(tree.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            what: object = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = info.st_rdev
        name = str(path.relative_to(tree))
        mtime = None if stat.S_ISDIR(info.st_mode) or name in written else info.st_mtime_ns
        entries[name] = (info.st_mode, info.st_uid, info.st_gid, what, mtime)
    return entries


# --- files: one case per row of the plan's table ---------------------------------------------


WHITEOUT = "whiteout"
TABLE = [  # path, BASE's, UPSTREAM's, LOCAL's (None: absent), the decision; then what OUT holds
    ("etc/stable.conf", "a\n", "a\n", "mine\n", "keep", "mine\n"),
    ("etc/changes.conf", "1.1\n", "1.2\n", "1.1+local\n", "keep+new", "1.1+local\n"),
    ("etc/same.conf", "old\n", "new\n", "new\n", "drop", None),
    ("etc/retired.conf", "x\n", None, "edited\n", "keep", "edited\n"),
    ("etc/touched.conf", "x\n", "x, upstream\n", "x\n", "drop", None),  # a copy-up, no change
    ("etc/added.conf", None, None, "mine\n", "keep", "mine\n"),
    ("etc/added.conf", None, "mine\n", "mine\n", "drop", None),
    ("etc/added.conf", None, "theirs\n", "mine\n", "keep+new", "mine\n"),
    ("etc/deletable.conf", "x\n", "x\n", WHITEOUT, "stay-deleted", WHITEOUT),
    ("etc/motd", "1.1\n", "1.2\n", WHITEOUT, "restore", None),
    ("etc/gone.conf", "x\n", None, WHITEOUT, "drop", None),
    ("usr/share/ucvm-fixture/usr-file", "x\n", "x\n", "x\nappended\n", "drop", None),
    ("usr/local/bin/tool", None, None, "#!/bin/sh\n", "keep", "#!/bin/sh\n"),
    ("usr/local/bin/tool", None, "upstream\n", "#!/bin/sh\n", "drop", None),
    ("usr/bin/gone", "x\n", "x\n", WHITEOUT, "drop", None),
]


NOTES = {"etc/retired.conf": "upstream removed it", "etc/motd": "upstream changed it"}


@pytest.mark.parametrize(("path", "base", "up", "local", "action", "out"), TABLE)
def test_one_rule_of_the_table(
    rb: Rebase,
    path: str,
    base: str | None,
    up: str | None,
    local: str,
    action: str,
    out: str | None,
) -> None:
    for tree, text in ((rb.base, base), (rb.up, up)):
        if text is not None:
            rb.put(tree, path, text)
    if local == WHITEOUT:
        rb.whiteout(path)
    else:
        rb.put(rb.local, path, local)
    rb.run("layers")
    decision, note = rb.decision(f"/{path}")
    assert decision == action and NOTES.get(path, "") in note
    kept = rb.out / path
    if out is None:
        assert not os.path.lexists(kept)
    else:
        whiteout = stat.S_ISCHR(kept.lstat().st_mode) and kept.lstat().st_rdev == 0
        assert whiteout if out == WHITEOUT else kept.read_text() == out
    upstream_copy = Path(f"{kept}.ucvm-new")
    assert upstream_copy.exists() == (action == "keep+new")
    assert action != "keep+new" or upstream_copy.read_text() == up


@pytest.mark.parametrize(("changed", "action"), [(False, "stay-deleted"), (True, "restore")])
def test_a_directory_deleted_locally_compares_its_whole_subtree(
    rb: Rebase, changed: bool, action: str
) -> None:
    for tree in (rb.base, rb.up):
        rb.put(tree, "etc/cron.daily/a", "a\n")
        rb.put(tree, "etc/cron.daily/sub/b", "b\n")
    if changed:
        rb.put(rb.up, "etc/cron.daily/sub/b", "b, upstream\n")
    (rb.local / "etc").mkdir()
    rb.whiteout("etc/cron.daily")
    rb.run("layers")
    assert rb.decision("/etc/cron.daily")[0] == action
    assert os.path.lexists(rb.out / "etc/cron.daily") == (action == "stay-deleted")


def test_the_lab_area_is_dropped_whole(rb: Rebase) -> None:
    rb.put(rb.local, ".ucvm/boot.env", "UCVM_TAG=1.1\n")
    (rb.local / ".ucvm/scratch").mkdir()
    rb.run("layers")
    assert [line[:2] for line in rb.lines() if ".ucvm" in line[1]] == [["drop", "/.ucvm"]]
    assert not (rb.out / ".ucvm").exists()


def test_temporary_files_and_account_backups_are_dropped(rb: Rebase) -> None:
    for tree in (rb.base, rb.up):  # every release has both, empty
        for empty in ("tmp", "var/tmp"):
            (tree / empty).mkdir(parents=True, exist_ok=True)
    rb.put(rb.local, "tmp/systemd-private-1/tmp/x", "x\n")
    rb.put(rb.local, "var/tmp/systemd-private-2/tmp/y", "y\n")
    rb.put(rb.local, "etc/subuid-", "alice:100000:65536\n")
    rb.run("layers")
    temporary = [line[:2] for line in rb.lines() if "tmp/" in line[1]]
    assert temporary == [["drop", "/tmp/systemd-private-1"], ["drop", "/var/tmp/systemd-private-2"]]
    assert rb.decision("/etc/subuid-")[0] == "drop"
    assert not (rb.out / "tmp/systemd-private-1").exists()
    assert not (rb.out / "var/tmp/systemd-private-2").exists()


def test_equal_means_mode_and_owner_too(rb: Rebase) -> None:
    rb.everywhere("etc/mode.conf", "x\n", "x, upstream\n", None)
    rb.put(rb.local, "etc/mode.conf", "x\n", mode=0o600)  # chmod only
    rb.everywhere("etc/owner.conf", "x\n", "x\n", None)
    rb.put(rb.local, "etc/owner.conf", "x\n", owner=33)  # chown only
    rb.run("layers")
    assert rb.decision("/etc/mode.conf")[0] == "keep+new"
    assert (rb.out / "etc/mode.conf").stat().st_mode & 0o777 == 0o600
    assert rb.decision("/etc/owner.conf")[0] == "keep"


def test_a_symlink_is_equal_by_its_target(rb: Rebase) -> None:
    for tree, target in ((rb.base, "a"), (rb.up, "b"), (rb.local, "c")):
        (tree / "etc/alternatives").mkdir(parents=True)
        (tree / "etc/alternatives/editor").symlink_to(target)
    rb.run("layers")
    assert rb.decision("/etc/alternatives/editor")[0] == "keep+new"
    assert os.readlink(rb.out / "etc/alternatives/editor") == "c"
    assert os.readlink(rb.out / "etc/alternatives/editor.ucvm-new") == "b"


def test_copies_keep_mode_owner_and_times(rb: Rebase) -> None:
    kept = rb.put(rb.local, "etc/secret.conf", "s\n", mode=0o4750, owner=1000, group=50)
    os.utime(kept, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    (rb.local / "etc").chmod(0o755)
    rb.run("layers")
    out = (rb.out / "etc/secret.conf").stat()
    assert (out.st_mode & 0o7777, out.st_uid, out.st_gid) == (0o4750, 1000, 50)
    assert out.st_mtime_ns == kept.stat().st_mtime_ns


def test_a_local_directory_is_kept_with_its_contents(rb: Rebase) -> None:
    rb.put(rb.base, "home/.keep")
    rb.put(rb.local, "home/alice/notes.txt", "hi\n", owner=1000)
    rb.put(rb.local, "home/alice/.cache/x", "", mode=0o600, owner=1000)
    (rb.local / "home/alice").chmod(0o700)
    os.chown(rb.local / "home/alice", 1000, 1000)
    rb.whiteout("home/alice/.cache/removed")
    rb.run("layers")
    assert rb.decision("/home/alice") == ("keep", "local directory")
    assert rb.decision("/home/alice/.cache/removed")[0] == "drop"
    home = (rb.out / "home/alice").stat()
    assert (home.st_mode & 0o777, home.st_uid) == (0o700, 1000)
    assert (rb.out / "home/alice/notes.txt").read_text() == "hi\n"
    assert not os.path.lexists(rb.out / "home/alice/.cache/removed")


def test_directories_take_upstream_s_mode_unless_changed_locally(rb: Rebase) -> None:
    for tree, mode in ((rb.base, 0o755), (rb.up, 0o750), (rb.local, 0o755)):
        rb.put(tree, "etc/app/a.conf", "a\n")
        rb.put(tree, "etc/local-mode/b.conf", "b\n")
        (tree / "etc/app").chmod(mode)
        (tree / "etc/local-mode").chmod(0o700 if tree == rb.local else 0o755)
    rb.put(rb.local, "etc/app/a.conf", "mine\n")
    rb.put(rb.local, "etc/local-mode/b.conf", "mine\n")
    rb.run("layers")
    assert (rb.out / "etc/app").stat().st_mode & 0o777 == 0o750
    assert (rb.out / "etc/local-mode").stat().st_mode & 0o777 == 0o700
    assert rb.decision("/etc/local-mode")[0] == "keep"


def test_an_earlier_rebase_s_upstream_copy_is_replaced(rb: Rebase) -> None:
    rb.everywhere("etc/c.conf", "1.1\n", "1.2\n", "mine\n")
    rb.put(rb.local, "etc/c.conf.ucvm-new", "1.0's\n")
    rb.run("layers")
    assert rb.decision("/etc/c.conf.ucvm-new")[0] == "drop"
    assert (rb.out / "etc/c.conf.ucvm-new").read_text() == "1.2\n"


def test_upstream_replacing_a_directory_by_a_file_drops_the_local_subtree(rb: Rebase) -> None:
    rb.put(rb.base, "opt/app/lib/x", "x\n")
    rb.put(rb.up, "opt/app", "now a file\n")
    rb.put(rb.local, "opt/app/lib/added", "mine\n")
    rb.run("layers")
    assert rb.decision("/opt/app")[0] == "drop"
    assert rb.decision("/opt/app/lib/added")[0] == "drop"
    assert not (rb.out / "opt/app").exists()


def test_only_local_entries_are_walked_and_odd_names_are_said(rb: Rebase) -> None:
    rb.put(rb.base, "etc/base-only.conf", "x\n")
    rb.put(rb.up, "etc/upstream-only.conf", "x\n")
    rb.put(rb.local, "etc/odd\nname", "x\n")
    rb.run("layers")
    assert sorted(p.name for p in rb.out.rglob("*")) == []
    paths = [line[1] for line in rb.lines()]
    assert "/etc/base-only.conf" not in paths and "/etc/upstream-only.conf" not in paths
    assert ["warn", "/etc/odd?name"] in [line[:2] for line in rb.lines()]


def test_the_log_has_three_fields_and_the_counts_sum_it_up(rb: Rebase) -> None:
    rb.everywhere("etc/a", "1\n", "2\n", "3\n")
    rb.everywhere("etc/b", "1\n", "1\n", "3\n")
    rb.everywhere("etc/c", "1\n", "1\n", None)
    rb.whiteout("etc/c")
    rb.everywhere("usr/d", "1\n", "1\n", "3\n")
    earlier = "begin from=1.0 to=1.1\ndrop\t/etc/old\tan earlier run\n"
    rb.log.write_text(earlier + "begin from=1.1@abc to=1.2@def gen=3->4 boot=7\n")
    rb.run("layers")
    rows = rb.lines()[3:]
    assert all(len(row) == 3 for row in rows), rows
    actions = Counter(action for action, _, _ in rows)
    counts = rb.counts()
    assert (counts["kept"], counts["kept_new"], counts["stayed_deleted"]) == (1, 1, 1)
    assert counts["dropped"] == actions["drop"] == 1  # the earlier run's line is not counted
    assert actions["warn"] == 1  # opaque directories are a known gap, said once


# --- accounts ----------------------------------------------------------------------------------

ACCOUNTS = {  # {m}: sudo's members, {shell} and {pw}: root's (changed locally)
    "passwd": "root:x:0:0:root:/root:{shell}\nsystemd-network:x:998:998::/:/usr/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nsudo:x:27:{m}\nshadow:x:42:\nusers:x:100:\nsystemd-network:x:998:\n",
    "shadow": "root:{pw}:19000:0:99999:7:::\nsystemd-network:!*:19000::::::\n"
    "nobody:*:19000:0:99999:7:::\n",
    "gshadow": "root:*::\nsudo:*::{m}\nshadow:*::\nusers:*::\nsystemd-network:!*::\n",
}
UPSTREAM_ADDS = {  # 1.2: a package's system user at 1000, and systemd-timesync at 997
    "passwd": "systemd-timesync:x:997:997::/:/usr/sbin/nologin\n"
    "ucvmsvc:x:1000:1000::/var/lib/ucvmsvc:/usr/sbin/nologin\n",
    "group": "systemd-timesync:x:997:\nucvmsvc:x:1000:\n",
    "shadow": "systemd-timesync:!*:19001::::::\nucvmsvc:!:19001::::::\n",
    "gshadow": "systemd-timesync:!*::\nucvmsvc:!::\n",
}
LOCAL_ADDS = {  # useradd -m alice, chpasswd; a local system account at 997
    "passwd": "alice:x:1000:1000:,,,:/home/alice:/bin/bash\n"
    "localsys:x:997:997::/:/usr/sbin/nologin\n",
    "group": "alice:x:1000:\nlocalsys:x:997:\n",
    "shadow": "alice:$6$alicehash:19500:0:99999:7:::\nlocalsys:!:19500::::::\n",
    "gshadow": "alice:!::\nlocalsys:!::\n",
}


def account_files(rb: Rebase) -> None:
    for name, text in ACCOUNTS.items():
        mode, group = (0o640, 42) if name in ("shadow", "gshadow") else (0o644, 0)
        for tree, values, adds in (
            (rb.base, {"m": "", "shell": "/bin/bash", "pw": "*"}, {}),
            (rb.up, {"m": "ucvmsvc", "shell": "/bin/bash", "pw": "*"}, UPSTREAM_ADDS),
            (rb.local, {"m": "alice", "shell": "/bin/zsh", "pw": "$6$roothash"}, LOCAL_ADDS),
        ):
            rb.put(tree, f"etc/{name}", text.format(**values) + adds.get(name, ""), mode, 0, group)
    rb.put(rb.local, "home/alice/notes.txt", "hi\n", owner=1000)
    os.chown(rb.local / "home/alice", 1000, 1000)
    rb.put(rb.local, "var/lib/alice-data/run", "#!/bin/sh\n", mode=0o4755, owner=1000)
    rb.put(rb.local, "etc/localsys.conf", "x\n", owner=997, group=0)
    rb.everywhere("etc/ucvmsvc.conf", "", None, None)  # upstream's copy belongs to ucvmsvc
    rb.put(rb.up, "etc/ucvmsvc.conf", "upstream\n", owner=1000)
    rb.put(rb.local, "etc/ucvmsvc.conf", "mine\n", owner=0)


def entries(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


def test_a_local_account_whose_id_upstream_took_moves_and_keeps_the_rest(rb: Rebase) -> None:
    account_files(rb)
    rb.run()
    passwd, group = entries(rb.out / "etc/passwd"), entries(rb.out / "etc/group")
    assert passwd["alice"][2:4] == ["1001", "1001"] and group["alice"][2] == "1001"
    assert passwd["ucvmsvc"][2] == "1000"  # upstream's ids are never moved: its files carry them
    assert passwd["localsys"][2:4] == ["999", "999"]  # a system account: highest free <= 999
    assert passwd["root"][6] == "/bin/zsh"  # the local shell change
    shadow = entries(rb.out / "etc/shadow")
    assert shadow["alice"][1] == "$6$alicehash" and shadow["root"][1] == "$6$roothash"
    assert group["sudo"][3] == "ucvmsvc,alice"  # members: the union
    assert entries(rb.out / "etc/gshadow")["sudo"][3] == "ucvmsvc,alice"
    assert rb.idmap.read_text().splitlines() == [
        "gid 1000 1001 alice", "gid 997 999 localsys",
        "uid 1000 1001 alice", "uid 997 999 localsys",
    ]  # fmt: skip
    action, detail = rb.decision("/etc/passwd:alice")
    assert action == "add" and "uid 1001 gid 1001" in detail
    uid_lines = [line for line in rb.lines() if line[0] == "uid"]
    assert uid_lines[0][1:] == [
        "/etc/passwd:alice",
        "1000 1001 alice: upstream uses 1000 for ucvmsvc",
    ]
    info = (rb.out / "etc/shadow").stat()
    assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o640, 0, 42)
    assert rb.counts()["ids_moved"] == 4


def test_the_files_of_a_moved_id_are_chowned_and_upstream_s_copies_are_not(rb: Rebase) -> None:
    account_files(rb)
    rb.run()
    owner = {p: (rb.out / p).lstat() for p in ("home/alice/notes.txt", "var/lib/alice-data/run")}
    assert all((info.st_uid, info.st_gid) == (1001, 1001) for info in owner.values())
    assert owner["var/lib/alice-data/run"].st_mode & 0o7777 == 0o4755  # setuid set again
    assert (rb.out / "etc/localsys.conf").stat().st_uid == 999
    assert (rb.out / "etc/ucvmsvc.conf.ucvm-new").stat().st_uid == 1000  # upstream's ucvmsvc
    assert (rb.out / "etc/passwd").stat().st_uid == 0
    chowned = {line[1]: line[2] for line in rb.lines() if line[0] == "chown"}
    assert chowned["/home/alice/notes.txt"] == "1000:1000->1001:1001"
    assert set(chowned) == {
        "/home/alice", "/home/alice/notes.txt", "/var/lib/alice-data/run", "/etc/localsys.conf",
    }  # fmt: skip
    assert rb.counts()["chowned"] == 4


def test_no_local_account_change_writes_nothing(rb: Rebase) -> None:
    account_files(rb)
    for name in ACCOUNTS:
        (rb.local / "etc" / name).unlink()
    rb.run("accounts")
    assert not any((rb.out / "etc" / name).exists() for name in ACCOUNTS)
    assert rb.idmap.read_text() == ""


def test_an_account_upstream_renumbered_moves_the_local_files_with_it(rb: Rebase) -> None:
    rb.put(rb.base, "etc/passwd", "root:x:0:0::/root:/bin/sh\nfoo:x:105:105::/:/bin/false\n")
    rb.put(rb.up, "etc/passwd", "root:x:0:0::/root:/bin/sh\nbar:x:105:105::/:/bin/false\n"
           "foo:x:106:105::/:/bin/false\n")  # fmt: skip
    rb.put(rb.local, "var/lib/foo/state", "s\n", owner=105, group=0)
    rb.run("layers", "accounts", "chown")
    assert rb.idmap.read_text() == "uid 105 106 foo\n"
    assert (rb.out / "var/lib/foo/state").stat().st_uid == 106
    assert not (rb.out / "etc/passwd").exists()  # nothing local to merge: upstream's shows


# --- dpkg ----------------------------------------------------------------------------------------


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def stanza(package: str, version: str, *extra: str, status: str = "install ok installed") -> str:
    fields = [f"Package: {package}", f"Status: {status}", "Priority: optional", "Section: misc",
              "Architecture: amd64", f"Version: {version}", *extra,
              f"Description: {package}", " a package of the lab's fixtures"]  # fmt: skip
    return "\n".join(fields) + "\n\n"


SVC_DEFAULT_1 = "# svc 1.0 defaults\n"
LOCAL_CONF = "# fixture-local\n"


def dpkg_files(rb: Rebase) -> None:
    db = "var/lib/dpkg"
    base = stanza("base-files", "12.4") + stanza("libc6", "2.36-9", "Provides: libc-any")
    rb.put(rb.base, f"{db}/status", base)
    rb.put(rb.base, f"{db}/diversions", "")
    svc2 = stanza(
        "ucvm-fixture-svc", "2.0", "Conffiles:", f" /etc/ucvm-fixture-svc.conf {md5('2')}"
    )
    rb.put(rb.up, f"{db}/status", base.replace("12.4", "12.5") + svc2)
    rb.put(rb.up, f"{db}/info/ucvm-fixture-svc.list", "/usr/bin/ucvm-fixture-svc\n")
    rb.put(rb.up, "usr/bin/ucvm-fixture-svc", "v2\n", mode=0o755)
    rb.put(rb.up, "etc/ucvm-fixture-svc.conf", "2")
    rb.put(rb.up, "etc/ucvm-fixture-svc/tuned.conf", "# svc 2.0 tuned\n")
    depends = "Depends: libc6 (>= 2.34), libc-any, libfoo | libbar"
    local = stanza("ucvm-fixture-local", "1.0", depends,
                   "Conffiles:", f" /etc/ucvm-fixture-local.conf {md5(LOCAL_CONF)}")  # fmt: skip
    svc1 = stanza("ucvm-fixture-svc", "1.0", "Conffiles:",
                  f" /etc/ucvm-fixture-svc.conf {md5(SVC_DEFAULT_1)}",
                  f" /etc/ucvm-fixture-svc/tuned.conf {md5(SVC_DEFAULT_1)}")  # fmt: skip
    rb.put(rb.local, f"{db}/status", base + local + svc1)
    rb.put(rb.local, f"{db}/status-old", base)
    for name in ("list", "md5sums", "conffiles", "postinst"):
        rb.put(rb.local, f"{db}/info/ucvm-fixture-local.{name}",
               "/usr/bin/ucvm-fixture-local\n/etc/ucvm-fixture-local.conf\n")  # fmt: skip
    rb.put(rb.local, f"{db}/info/ucvm-fixture-local.d.list", "/not/this/package\n")
    rb.put(rb.local, f"{db}/info/ucvm-fixture-local:amd64.triggers", "interest /x\n")
    svc_files = ["/.", "/usr", "/usr/bin/ucvm-fixture-svc", "/bin/ucvm-fixture-svc-helper",
                 "/usr/share", "/usr/share/doc", "/usr/share/doc/ucvm-fixture-svc",
                 "/usr/share/doc/ucvm-fixture-svc/old-only",
                 "/etc/ucvm-fixture-svc.conf", "/etc/ucvm-fixture-svc/tuned.conf"]  # fmt: skip
    rb.put(rb.local, f"{db}/info/ucvm-fixture-svc.list", "".join(f"{p}\n" for p in svc_files))
    rb.put(rb.local, f"{db}/lock")
    rb.put(rb.local, f"{db}/updates/0001", "half an operation\n")
    rb.put(rb.local, f"{db}/diversions", "/usr/bin/x\n/usr/bin/x.real\nucvm-fixture-local\n")
    rb.put(rb.local, "usr/bin/ucvm-fixture-local", "#!/bin/sh\n", mode=0o755)
    rb.put(rb.local, "etc/ucvm-fixture-local.conf", LOCAL_CONF)
    rb.put(rb.local, "usr/bin/ucvm-fixture-svc", "v1\n", mode=0o755)
    rb.put(rb.local, "usr/bin/ucvm-fixture-svc-helper", "only 1.0 had it\n")  # /bin/: merged /usr
    for tree in (rb.base, rb.up):
        (tree / "bin").symlink_to("usr/bin")
    rb.put(rb.local, "usr/share/doc/ucvm-fixture-svc/old-only", "only 1.0 had it\n")
    rb.put(rb.local, "etc/ucvm-fixture-svc.conf", SVC_DEFAULT_1)  # unchanged since dpkg -i
    rb.put(rb.local, "etc/ucvm-fixture-svc/tuned.conf", "# tuned by the user\n")


def packages(status: Path) -> dict[str, str]:
    found, name = {}, ""
    for line in status.read_text().splitlines():
        if line.startswith("Package: "):
            name = line.split()[1]
        elif line.startswith("Version: "):
            found[name] = line.split()[1]
    return found


def test_local_packages_are_kept_or_replaced_by_upstream_s(rb: Rebase) -> None:
    dpkg_files(rb)
    rb.run("layers", "dpkg")
    assert packages(rb.out / "var/lib/dpkg/status") == {
        "base-files": "12.5", "libc6": "2.36-9",
        "ucvm-fixture-svc": "2.0", "ucvm-fixture-local": "1.0",
    }  # fmt: skip
    info = sorted(p.name for p in (rb.out / "var/lib/dpkg/info").iterdir())
    names = ("conffiles", "list", "md5sums", "postinst")
    assert info == [
        *(f"ucvm-fixture-local.{e}" for e in names),
        "ucvm-fixture-local:amd64.triggers",
    ]
    assert (rb.out / "usr/bin/ucvm-fixture-local").exists()
    assert (rb.out / "etc/ucvm-fixture-local.conf").exists()
    for gone in ("usr/bin/ucvm-fixture-svc", "usr/bin/ucvm-fixture-svc-helper", "usr/share",
                 "etc/ucvm-fixture-svc.conf", "etc/ucvm-fixture-svc.conf.ucvm-new"):  # fmt: skip
        assert not (rb.out / gone).exists(), gone
    assert rb.decision("/etc/ucvm-fixture-svc.conf")[0] == "drop"  # an unchanged conffile
    assert (rb.out / "etc/ucvm-fixture-svc/tuned.conf").read_text() == "# tuned by the user\n"
    assert (rb.out / "etc/ucvm-fixture-svc/tuned.conf.ucvm-new").exists()
    assert rb.decision("ucvm-fixture-svc")[1].startswith("local 1.0 -> upstream 2.0")
    assert rb.decision("ucvm-fixture-local")[0] == "pkg-keep"
    warned = {line[1]: line[2] for line in rb.lines() if line[0] == "warn"}
    assert (
        warned["ucvm-fixture-local"] == "depends on libfoo | libbar, which the merged status lacks"
    )
    assert {"/var/lib/dpkg/updates/0001", "/var/lib/dpkg/diversions"} <= set(warned)
    assert rb.decision("/var/lib/dpkg/lock")[0] == "drop"
    counts = rb.counts()
    assert (counts["pkgs_kept"], counts["pkgs_replaced"]) == (1, 1)


def test_a_package_removed_locally_that_upstream_ships_is_restored_whole(rb: Rebase) -> None:
    nano = stanza("nano", "7.2-1", "Conffiles:", f" /etc/nanorc {md5('rc')}")
    for tree in (rb.base, rb.up):
        rb.put(tree, "var/lib/dpkg/status", stanza("base-files", "12.4") + nano)
        rb.put(tree, "var/lib/dpkg/info/nano.list", "/bin\n/bin/nano\n/etc/nanorc\n")
        rb.put(tree, "etc/nanorc", "rc")
        rb.put(tree, "bin/nano", "nano\n")
    rb.put(rb.local, "var/lib/dpkg/status", stanza("base-files", "12.4"))
    rb.whiteout("var/lib/dpkg/info/nano.list")
    rb.whiteout("etc/nanorc")
    rb.whiteout("bin/nano")
    rb.run("layers", "dpkg")
    assert rb.decision("nano") == ("pkg-restore", "removed locally; upstream still ships 7.2-1")
    assert rb.decision("/etc/nanorc")[0] == "restore"  # stay-deleted by the table, then restored
    assert not os.path.lexists(rb.out / "etc/nanorc")
    assert not (rb.out / "var/lib/dpkg/status").exists()  # nothing kept: upstream's shows


def release_status(release: str) -> Path | None:
    for marker in sorted(RELEASE_ROOTS.glob("os-root-*/root/etc/ucvm-release")):
        if f"release={release}\n" in marker.read_text():
            return marker.parents[1] / "var/lib/dpkg/status"
    return None


def test_a_real_release_status_takes_the_local_package(rb: Rebase) -> None:
    old, new = release_status("1.1"), release_status("1.2")
    if old is None or new is None:
        pytest.skip(f"no release roots 1.1 and 1.2 under {RELEASE_ROOTS} (`ucvm-lab build`)")
    local = stanza("ucvm-fixture-local", "1.0", "Depends: libc6 (>= 2.34), debconf | debconf-2.0")
    rb.put(rb.base, "var/lib/dpkg/status", old.read_text())
    rb.put(rb.up, "var/lib/dpkg/status", new.read_text())
    rb.put(rb.local, "var/lib/dpkg/status", old.read_text() + local)
    rb.put(rb.local, "var/lib/dpkg/info/ucvm-fixture-local.list", "/usr/bin/ucvm-fixture-local\n")
    rb.run("dpkg")
    merged = packages(rb.out / "var/lib/dpkg/status")
    assert merged == {**packages(new), "ucvm-fixture-local": "1.0"}
    assert [line[0] for line in rb.lines()].count("pkg-keep") == 1
    assert not [line for line in rb.lines() if line[0] in ("warn", "pkg-replace")]


# --- a cut-short run, redone -------------------------------------------------------------------

MERGED = (*(f"etc/{name}" for name in ACCOUNTS), "var/lib/dpkg/status")


def test_a_cut_short_run_is_redone_from_scratch_to_the_same_layer(rb: Rebase) -> None:
    account_files(rb)
    dpkg_files(rb)
    rb.everywhere("etc/changes.conf", "1.1\n", "1.2\n", "mine\n")
    rb.run()
    done, idmap = listing(rb.out, MERGED), rb.idmap.read_text()
    rb.fresh()
    rb.run("layers")  # cut short after the files: half of OUT, and one file half copied
    (rb.out / "etc/changes.conf").write_text("mi")
    shutil.rmtree(rb.out / "home")
    rb.run()  # over the half-built OUT: what it writes is replaced
    assert listing(rb.out, MERGED) == done
    rb.fresh()  # what the caller does: an empty OUT and idmap, then all again
    rb.log.write_text(rb.log.read_text() + "begin from=1.1 to=1.2 (again)\n")
    rb.run()
    assert listing(rb.out, MERGED) == done and rb.idmap.read_text() == idmap
    assert rb.counts()["pkgs_kept"] == 1  # the last run's lines only
