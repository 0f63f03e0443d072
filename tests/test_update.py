"""The OS's `ucvm-update` (lab/build/os-files/usr/sbin/ucvm-update) run under bash on the host,
its paths under a test's directory (UCVM_ROOT) and the block client a fake that serves files
from a directory: the exit codes and markers of --check, and what --apply stages or refuses
(docs/rebase-plan.md, sections 2 and 3). Host-only: no guest boots.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.build import os_files

OS_FILES = os_files.OS_FILES
UPDATE = OS_FILES / "usr/sbin/ucvm-update"
UNITS = OS_FILES / "usr/lib/systemd/system"
SERVER = "http://169.254.169.100/"
MIB = 1 << 20

# The block client as the OS finds it in /.ucvm/scratch/ucvm/loader/: `get URL OUT` copies the
# file under $FAKE_REPO that URL names, and fails as the real one does: 2 when the server does
# not answer, 3 for a missing file (404) or a body over --max-bytes. `verify` drops the
# signature line, or refuses a manifest whose signature line says `bad` (4).
FAKE_BLOCKD = """\
#!/bin/sh
echo "$*" >>"$FAKE_CALLS"
case "$1" in
get)
	if [ -n "$FAKE_UNREACHABLE" ]; then
		echo "ucvm-blockd: server unreachable: $2 (4 attempts)" >&2
		exit 2
	fi
	file=$FAKE_REPO/${2#"$FAKE_SERVER"}
	[ -f "$file" ] || { echo "ucvm-blockd: $2: HTTP 404 Not Found" >&2; exit 3; }
	max=$(echo "$*" | sed -n 's/.*--max-bytes \\([0-9]*\\).*/\\1/p')
	if [ -n "$max" ] && [ "$(stat -c %s "$file")" -gt "$max" ]; then
		echo "ucvm-blockd: $2: the body has more than the $max expected" >&2
		exit 3
	fi
	cp "$file" "$3" ;;
verify)
	if grep -q '^signature bad' "$3"; then
		echo "ucvm-blockd: $3: the signature does not verify" >&2
		exit 4
	fi
	grep -v '^signature ' "$3" >"$4" ;;
*) exit 1 ;;
esac
"""
# df -Pm as coreutils prints it, the free MiB from $FAKE_FREE_MB
FAKE_DF = """\
#!/bin/sh
echo "Filesystem 1048576-blocks Used Available Capacity Mounted on"
echo "/dev/vdb1 1000 100 $FAKE_FREE_MB 10% /.ucvm/scratch"
"""


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class LoaderFiles:
    version: str
    kernel: bytes
    initrd: bytes

    def line(self) -> str:
        return (
            f"loader {self.version} 2026-11-30T12:00:00Z {sha(self.kernel)} {len(self.kernel)} "
            f"{sha(self.initrd)} {len(self.initrd)}"
        )


LOADERS = {
    "0.1": LoaderFiles("0.1", b"kernel 0.1\n" * 300_000, b"initrd 0.1\n" * 100_000),
    "0.2": LoaderFiles("0.2", b"kernel 0.2\n" * 300_000, b"initrd 0.2\n" * 100_000),
}
# tag -> (branch, loader field or None: then loader 0.1)
SNAPSHOTS = {
    "1.0": ("prod", None), "1.1": ("prod", None), "1.2": ("prod", "0.2"),
    "1.3-broken": ("faults", "0.1"), "2.0-dev": ("devel", "0.2"),
}  # fmt: skip


def image(tag: str) -> str:
    return sha(tag + ".img")


def manifest(prod: str = "1.2", serial: int = 9, signature: str = "ed25519") -> str:
    snapshots = [
        f"snapshot {tag} {branch} 2026-11-20T08:15:00Z {image(tag)} 98304000 65536 "
        f"{sha(tag + '.blocks')}" + (f" {loader}" if loader else "")
        for tag, (branch, loader) in SNAPSHOTS.items()
    ]
    lines = [
        "ucvm-manifest 1", "repository ucvm-test", f"serial {serial}",
        "published 2026-11-25T00:32:42Z", "default-branch prod", *snapshots,
        *(loader.line() for loader in LOADERS.values()),
        "a-record-of-a-later-format with fields",  # skipped, not refused
        f"branch prod {prod}", "branch devel 2.0-dev", "branch faults 1.3-broken",
        f"signature {signature} 0123456789abcdef c2lnbmF0dXJl",
    ]  # fmt: skip
    return "".join(line + "\n" for line in lines)


class Vm:
    """An OS root as the boot loader leaves it (boot.env, scratch with the pin, the block
    client it hands on, a writable layer), and a repository the fake client serves."""

    def __init__(self, top: Path) -> None:
        self.root = top / "root"
        self.repo = top / "repo"
        self.console = top / "console"
        self.calls_file = top / "blockd.calls"
        self.free_mb = 1000
        self.unreachable = False
        self.bin = top / "bin"  # before PATH: commands that fail on purpose
        self.bin.mkdir()
        self.scratch = self.root / ".ucvm/scratch/ucvm"
        loader = self.scratch / "loader"
        for folder in (loader, self.scratch / "layers/2/upper/etc", self.repo / "loaders",
                       self.root / "run", self.root / "proc"):  # fmt: skip
            folder.mkdir(parents=True)
        blockd = loader / "ucvm-blockd"
        blockd.write_text(FAKE_BLOCKD)
        blockd.chmod(0o755)
        (loader / "repo.pub").write_text("ed25519 0123456789abcdef cHVibGlj\n")
        (loader / "version").write_text("0.1\n")
        self.df = top / "df"
        self.df.write_text(FAKE_DF)
        self.df.chmod(0o755)
        (self.scratch / "layers/2/upper/etc/changes.conf").write_bytes(b"x" * (3 * MIB))
        (self.scratch / "boots").write_text("7\n")
        (self.scratch / "serial").write_text("9\n")
        (self.root / "proc/cmdline").write_text("console=ttyS0\n")
        self.boot_env(tag="1.1")
        self.pin(tag="1.1")
        self.publish(manifest())
        for files in LOADERS.values():
            (self.repo / f"loaders/{sha(files.kernel)}.kernel").write_bytes(files.kernel)
            (self.repo / f"loaders/{sha(files.initrd)}.initrd").write_bytes(files.initrd)

    def publish(self, text: str) -> None:
        (self.repo / "manifest").write_text(text)

    def boot_env(self, tag: str, loader: str = "0.1", **more: str) -> None:
        values = {
            "UCVM_TAG": tag, "UCVM_SNAPSHOT": image(tag), "UCVM_BRANCH": SNAPSHOTS[tag][0],
            "UCVM_CACHE_STATS": f"/.ucvm/scratch/ucvm/cache/{image(tag)}/stats",
            "UCVM_REPO": SERVER, "UCVM_LOADER": loader, "UCVM_POLICY": "rebase",
            "UCVM_POLICY_SOURCE": "default", "UCVM_GENERATION": "2", **more,
        }  # fmt: skip
        (self.root / ".ucvm/boot.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def pin(self, tag: str, **more: str) -> None:
        values = {
            "tag": tag, "snapshot": image(tag), "branch": SNAPSHOTS[tag][0],
            "loader": SNAPSHOTS[tag][1] or "0.1", "policy": "rebase", "requested": "-",
            "source": "newest", "generation": "2", "state": "confirmed", "tries": "0",
            "boot": "7", **more,
        }  # fmt: skip
        (self.scratch / "pin").write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "UCVM_ROOT": str(self.root),
            "UCVM_CONSOLE": str(self.console),
            "UCVM_DF": str(self.df),
            "FAKE_REPO": str(self.repo),
            "FAKE_SERVER": SERVER,
            "FAKE_CALLS": str(self.calls_file),
            "FAKE_UNREACHABLE": "1" if self.unreachable else "",
            "FAKE_FREE_MB": str(self.free_mb),
        }
        return subprocess.run(
            ["bash", UPDATE, *args], env=env, capture_output=True, text=True, timeout=60
        )

    def marker(self) -> str:
        """The one marker on the console, which starts a line of its own."""
        text = self.console.read_text()
        assert text.startswith("\n") and text.count("\n") == 2, repr(text)
        return text.strip("\n")

    def calls(self) -> list[str]:
        return self.calls_file.read_text().splitlines() if self.calls_file.exists() else []

    def tree(self) -> dict[str, str]:
        """Every file under the root but /run: its path and content hash."""
        return {
            str(path.relative_to(self.root)): sha(path.read_bytes())
            for path in sorted(self.root.rglob("*"))
            if path.is_file() and not path.relative_to(self.root).as_posix().startswith("run/")
        }


@pytest.fixture
def vm(tmp_path: Path) -> Vm:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    return Vm(tmp_path)


def motd(vm: Vm) -> str:
    return (vm.root / "run/motd.d/90-ucvm-update").read_text()


# --- --check ----------------------------------------------------------------------------------


def test_an_update_on_the_pinned_branch_is_notified(vm: Vm) -> None:
    before = vm.tree()
    result = vm.run("--check", "--notify")
    assert result.returncode == 100, result.stderr
    marker = "ucvm: update status=available pinned=1.1 newest=1.2 loader=0.1->0.2 policy=rebase"
    assert vm.marker() == marker
    assert motd(vm) == marker + "\n"
    assert len(result.stdout.splitlines()) == 1 and "1.1 -> 1.2" in result.stdout
    assert vm.tree() == before  # it writes only under /run
    assert not (vm.root / "etc/motd").exists()
    (get,) = [c for c in vm.calls() if c.startswith("get ")]
    signed = vm.root / "run/ucvm-update/manifest.signed"
    assert get.split()[1:3] == [f"{SERVER}manifest", str(signed)]
    assert "--retries 3" in get and "--max-bytes 1048576" in get


def test_up_to_date(vm: Vm) -> None:
    vm.boot_env(tag="1.2", loader="0.2")
    vm.pin(tag="1.2")
    result = vm.run("--check", "--notify")
    assert result.returncode == 0, result.stderr
    assert vm.marker() == "ucvm: update status=up-to-date"
    assert motd(vm) == "ucvm: update status=up-to-date\n"
    assert "up to date" in result.stdout


def test_the_heads_loader_alone_is_an_update(vm: Vm) -> None:
    vm.boot_env(tag="1.2", loader="0.1")  # 1.2 booted by the image's loader, not 0.2
    vm.pin(tag="1.2")
    assert vm.run("--check", "--notify").returncode == 100
    assert vm.marker().endswith(" newest=1.2 loader=0.1->0.2 policy=rebase")


def test_the_same_loader_shows_once(vm: Vm) -> None:
    vm.boot_env(tag="1.0")
    vm.pin(tag="1.0")
    vm.publish(manifest(prod="1.1"))
    assert vm.run("--check", "--notify").returncode == 100
    assert vm.marker().endswith(" pinned=1.0 newest=1.1 loader=0.1 policy=rebase")


def test_a_pin_without_its_hash_yet_goes_by_what_booted(vm: Vm) -> None:
    vm.boot_env(tag="1.2", loader="0.2")
    vm.pin(tag="1.2", snapshot="")  # a legacy pin, imported at this boot
    assert vm.run("--check").returncode == 0


def test_without_notify_nothing_is_notified(vm: Vm) -> None:
    assert vm.run("--check").returncode == 100
    assert not vm.console.exists() and not (vm.root / "run/motd.d").exists()


def test_policy_stay_still_reports_the_update(vm: Vm) -> None:
    vm.boot_env(tag="1.1", UCVM_POLICY="stay", UCVM_POLICY_SOURCE="boot-option")
    result = vm.run("--check", "--notify")
    assert result.returncode == 100
    assert vm.marker().endswith(" policy=stay")
    assert "ucvm.update=stay" in result.stdout


def test_a_rolled_back_version_is_named(vm: Vm) -> None:
    (vm.scratch / "failed").write_text(
        f"tag=1.3-broken\nsnapshot={image('1.3-broken')}\nreason=not-ready\nboot=6\n"
    )
    result = vm.run("--check", "--notify")
    assert result.returncode == 100
    assert vm.marker() == (
        "ucvm: update status=available pinned=1.1 newest=1.2 loader=0.1->0.2 policy=rebase"
        " failed=1.3-broken reason=not-ready"
    )
    assert "1.3-broken failed at boot 6 (not-ready)" in result.stdout


def test_a_staged_update_is_reported_without_the_repository(vm: Vm) -> None:
    (vm.scratch / "staged").mkdir()
    (vm.scratch / "staged/pin").write_text(f"tag=1.2\nsnapshot={image('1.2')}\nloader=0.2\n")
    vm.unreachable = True
    result = vm.run("--check", "--notify")
    assert result.returncode == 110, result.stderr
    assert vm.marker() == "ucvm: update status=staged next=1.2"
    assert "reboot" in result.stdout
    assert vm.calls() == []


def test_an_unreachable_repository_is_named(vm: Vm) -> None:
    vm.unreachable = True
    before = vm.tree()
    result = vm.run("--check", "--notify")
    assert result.returncode == 2
    assert f"repository unreachable: {SERVER}" in result.stderr
    assert vm.marker() == f"ucvm: update status=unreachable server={SERVER}"
    assert motd(vm) == f"ucvm: update status=unreachable server={SERVER}\n"
    assert vm.tree() == before


@pytest.mark.parametrize(
    ("text", "reason", "says"),
    [
        (manifest(signature="bad"), "bad-signature", "does not verify"),
        (manifest(serial=8), "old-serial", "serial 8 is older than 9"),
        ("<html>not found</html>\nsignature ed25519 0 0\n", "not-a-manifest", "ucvm-manifest 1"),
    ],
)
def test_a_manifest_is_refused(vm: Vm, text: str, reason: str, says: str) -> None:
    vm.publish(text)
    result = vm.run("--check", "--notify")
    assert result.returncode == 3
    assert says in result.stderr and SERVER in result.stderr
    assert vm.marker() == f"ucvm: update status=refused server={SERVER} reason={reason}"


def test_a_local_error(vm: Vm) -> None:
    (vm.root / ".ucvm/boot.env").unlink()
    result = vm.run("--check", "--notify")
    assert result.returncode == 1
    assert "no /.ucvm/boot.env" in result.stderr
    assert vm.calls() == []


@pytest.mark.parametrize("args", [[], ["--check", "--apply"], ["--check", "--to", "1.2"],
                                  ["--apply", "--notify"], ["--apply", "--to"]])  # fmt: skip
def test_bad_usage(vm: Vm, args: list[str]) -> None:
    result = vm.run(*args)
    assert result.returncode == 1 and "ucvm-update" in result.stderr
    assert vm.calls() == []


# --- --apply ----------------------------------------------------------------------------------


def kexec_dirs(vm: Vm) -> list[str]:
    kexec = vm.scratch / "kexec"
    return sorted(p.name for p in kexec.iterdir()) if kexec.exists() else []


def test_apply_stages_the_pin_and_the_loader(vm: Vm) -> None:
    pin_before = (vm.scratch / "pin").read_text()
    result = vm.run("--apply")
    assert result.returncode == 0, result.stderr
    assert "reboot to apply" in result.stdout
    files = LOADERS["0.2"]
    kexec = vm.scratch / "kexec/0.2"
    assert kexec_dirs(vm) == ["0.2"]
    assert sorted(p.name for p in kexec.iterdir()) == ["apply", "initrd", "kernel"]
    assert (kexec / "kernel").read_bytes() == files.kernel
    assert (kexec / "initrd").read_bytes() == files.initrd
    assert (kexec / "apply").read_text().splitlines() == [
        "version=0.2", "kernel=kernel", f"kernel_sha256={sha(files.kernel)}", "initrd=initrd",
        f"initrd_sha256={sha(files.initrd)}", "cmdline=",
    ]  # fmt: skip
    staged = vm.scratch / "staged"
    assert sorted(p.name for p in staged.iterdir()) == ["manifest.signed", "pin"]
    assert (staged / "manifest.signed").read_text() == (vm.repo / "manifest").read_text()
    assert (staged / "pin").read_text().splitlines() == [
        "tag=1.2", f"snapshot={image('1.2')}", "branch=prod", "loader=0.2", "serial=9",
        "staged_boot=7",
    ]  # fmt: skip
    assert (vm.scratch / "pin").read_text() == pin_before  # the next boot promotes it
    # each loader file fetched with exactly its size as the limit
    gets = [c for c in vm.calls() if c.startswith("get ") and "/loaders/" in c]
    assert [re.search(r"--max-bytes (\d+)", c).group(1) for c in gets] == [  # type: ignore[union-attr]
        str(len(files.kernel)),
        str(len(files.initrd)),
    ]
    assert not list(vm.scratch.rglob("*.tmp")) and not list(vm.scratch.rglob("*.old"))
    assert vm.run("--check", "--notify").returncode == 110


def test_apply_without_another_loader_fetches_none(vm: Vm) -> None:
    vm.boot_env(tag="1.0")
    vm.pin(tag="1.0")
    result = vm.run("--apply", "--to", "1.1")
    assert result.returncode == 0, result.stderr
    assert kexec_dirs(vm) == []
    assert (vm.scratch / "staged/pin").read_text().splitlines()[:4] == [
        "tag=1.1",
        f"snapshot={image('1.1')}",
        "branch=prod",
        "loader=0.1",
    ]
    assert not [c for c in vm.calls() if "/loaders/" in c]


def test_apply_to_a_branch_follows_it(vm: Vm) -> None:
    assert vm.run("--apply", "--to", "devel").returncode == 0
    assert (vm.scratch / "staged/pin").read_text().splitlines()[:4] == [
        "tag=2.0-dev",
        f"snapshot={image('2.0-dev')}",
        "branch=devel",
        "loader=0.2",
    ]


def test_apply_keeps_a_loader_already_staged(vm: Vm) -> None:
    assert vm.run("--apply").returncode == 0
    (vm.scratch / "staged/pin").unlink()
    (vm.scratch / "staged/manifest.signed").unlink()
    vm.calls_file.unlink()
    assert vm.run("--apply", "--to", "2.0-dev").returncode == 0
    assert not [c for c in vm.calls() if "/loaders/" in c]
    assert kexec_dirs(vm) == ["0.2"]


def test_apply_to_what_runs_stages_nothing(vm: Vm) -> None:
    result = vm.run("--apply", "--to", "1.1")
    assert result.returncode == 0 and "nothing staged" in result.stdout
    assert not (vm.scratch / "staged").exists() and kexec_dirs(vm) == []


@pytest.mark.parametrize(
    ("policy", "source", "says"),
    [
        ("stay", "boot-option", "the boot option ucvm.update=stay"),
        ("diverge", "user-data", "the user-data's update_policy=diverge"),
    ],
)
def test_apply_is_refused_by_the_policy(vm: Vm, policy: str, source: str, says: str) -> None:
    vm.boot_env(tag="1.1", UCVM_POLICY=policy, UCVM_POLICY_SOURCE=source)
    before = vm.tree()
    result = vm.run("--apply")
    assert result.returncode == 4
    assert f"the update policy is {policy} (set by {says})" in result.stderr
    assert vm.tree() == before and vm.calls() == []


def test_a_policy_from_the_pin_is_named(vm: Vm) -> None:
    text = (vm.root / ".ucvm/boot.env").read_text()
    (vm.root / ".ucvm/boot.env").write_text(re.sub(r"UCVM_POLICY.*\n", "", text))
    vm.pin(tag="1.1", policy="stay")
    result = vm.run("--apply")
    assert result.returncode == 4
    assert "set by the pin (/.ucvm/scratch/ucvm/pin)" in result.stderr


def upper_mib(vm: Vm) -> int:
    du = subprocess.run(["du", "-sm", vm.scratch / "layers/2/upper"], capture_output=True,
                        text=True, check=True)  # fmt: skip
    return int(du.stdout.split()[0])


def test_scratch_full_changes_nothing(vm: Vm) -> None:
    files = LOADERS["0.2"]
    need = -(-(len(files.kernel) + len(files.initrd)) // MIB) + upper_mib(vm) + 16
    vm.free_mb = need - 1
    before = vm.tree()
    result = vm.run("--apply")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"ucvm-update: scratch full: need {need} MiB, {need - 1} MiB free on /.ucvm/scratch; "
        "nothing changed"
    )
    assert vm.tree() == before
    assert not (vm.scratch / "staged").exists() and kexec_dirs(vm) == []
    vm.free_mb = need
    assert vm.run("--apply").returncode == 0


@pytest.mark.parametrize(
    ("kind", "served", "says"),
    [
        ("initrd", lambda data: b"X" + data[1:], "does not match the signed manifest"),
        ("kernel", lambda data: data + b"more", "is refused"),  # over its exact --max-bytes
    ],
)
def test_a_loader_file_that_does_not_match_is_refused(
    vm: Vm, kind: str, served: Callable[[bytes], bytes], says: str
) -> None:
    data = getattr(LOADERS["0.2"], kind)
    (vm.repo / f"loaders/{sha(data)}.{kind}").write_bytes(served(data))
    before = vm.tree()
    result = vm.run("--apply")
    assert result.returncode == 3 and says in result.stderr
    assert kexec_dirs(vm) == [] and not (vm.scratch / "staged").exists()
    assert vm.tree() == before


def test_apply_when_unreachable_leaves_what_was_staged(vm: Vm) -> None:
    assert vm.run("--apply").returncode == 0
    before = vm.tree()
    vm.unreachable = True
    result = vm.run("--apply", "--to", "1.0")
    assert result.returncode == 2 and f"repository unreachable: {SERVER}" in result.stderr
    assert vm.tree() == before
    assert kexec_dirs(vm) == ["0.2"]


def test_a_damaged_staged_loader_is_fetched_again(vm: Vm) -> None:
    assert vm.run("--apply").returncode == 0
    (vm.scratch / "kexec/0.2/initrd").write_bytes(b"damaged")
    vm.calls_file.unlink()
    assert vm.run("--apply").returncode == 0
    assert (vm.scratch / "kexec/0.2/initrd").read_bytes() == LOADERS["0.2"].initrd
    assert len([c for c in vm.calls() if "/loaders/" in c]) == 2
    assert kexec_dirs(vm) == ["0.2"]


def fail_on(vm: Vm, command: str, pattern: str) -> None:
    """``command`` fails when its arguments match the shell ``pattern`` (a disk error)."""
    fake = vm.bin / command
    real = shutil.which(command)
    fake.write_text(f'#!/bin/sh\ncase "$*" in {pattern}) exit 1 ;; esac\nexec {real} "$@"\n')
    fake.chmod(0o755)


@pytest.mark.parametrize(
    ("command", "pattern", "says"),
    [
        ("sync", "*staged.tmp*", "cannot write /.ucvm/scratch/ucvm/staged.tmp"),
        ("mv", "*staged.tmp*/staged", "cannot rename /.ucvm/scratch/ucvm/staged.tmp to staged"),
    ],
)
def test_a_failure_while_staging_restores_what_was_staged(
    vm: Vm, command: str, pattern: str, says: str
) -> None:
    assert vm.run("--apply").returncode == 0
    (vm.scratch / "kexec/0.2/initrd").write_bytes(b"damaged")  # so it is fetched again
    before = vm.tree()
    fail_on(vm, command, pattern)  # after kexec/0.2 was replaced
    vm.calls_file.unlink()
    result = vm.run("--apply", "--to", "2.0-dev")
    assert result.returncode == 1 and says in result.stderr
    assert len([c for c in vm.calls() if "/loaders/" in c]) == 2  # it got that far
    assert vm.tree() == before
    assert kexec_dirs(vm) == ["0.2"] and sorted(p.name for p in vm.scratch.iterdir()) == [
        "boots",
        "kexec",
        "layers",
        "loader",
        "pin",
        "serial",
        "staged",
    ]


def test_a_failure_while_staging_leaves_no_new_loader(vm: Vm) -> None:
    fail_on(vm, "sync", "*staged.tmp*")
    before = vm.tree()
    assert vm.run("--apply").returncode == 1
    assert vm.tree() == before and kexec_dirs(vm) == []


def test_apply_to_an_unknown_version(vm: Vm) -> None:
    result = vm.run("--apply", "--to", "9.9")
    assert result.returncode == 1
    assert "no tag or branch '9.9'" in result.stderr and "tags: 1.0 1.1 1.2" in result.stderr


# --- the units and the install --------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_the_timer_runs_the_check_daily() -> None:
    timer = unit("ucvm-update-check.timer")
    assert timer["Timer"]["OnBootSec"] == "10min"
    assert timer["Timer"]["OnUnitActiveSec"] == "1d"
    assert timer["Install"]["WantedBy"] == "timers.target"
    service = unit("ucvm-update-check.service")
    assert service["Service"]["ExecStart"] == "/usr/sbin/ucvm-update --check --notify"
    assert service["Service"]["SuccessExitStatus"].split() == ["100", "110"]
    assert service["Unit"]["ConditionPathExists"] == "/.ucvm/boot.env"
    assert "ucvm-update-check.timer" in os_files.UNITS_ENABLED


def test_ucvm_update_is_installed_executable(tmp_path: Path) -> None:
    os_files.install_os_files(tmp_path)
    assert (tmp_path / "usr/sbin/ucvm-update").stat().st_mode & 0o777 == 0o755
    assert "/usr/sbin/ucvm-update" in os_files.written_by_the_lab()
    assert UPDATE.read_text().startswith("#!/bin/bash\n")
