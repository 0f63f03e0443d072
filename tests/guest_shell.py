"""The boot loader's shell functions (lab/build/initramfs/functions, context and pin) run in
busybox sh on the host, their fixed paths rewritten under a test's directory: the `Guest`
harness that tests/test_observe.py and tests/test_pin.py drive, and a manifest to feed it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import observe

INITRAMFS = Path(observe.__file__).parent / "build" / "initramfs"
FUNCTIONS = INITRAMFS / "functions"
CONTEXT_FUNCTIONS = INITRAMFS / "context"
PIN_FUNCTIONS = INITRAMFS / "pin"
KEXEC_FUNCTIONS = INITRAMFS / "kexec"
REBASE_FUNCTIONS = tuple(
    INITRAMFS / name for name in ("rebase", "rebase-accounts", "rebase-dpkg", "carry")
)  # /init sources them all

# --- the markers as the guest's shell functions print them -------------------------------------

# The fixed paths the functions use, rewritten to files under the test's directory. A path the
# functions no longer use fails the test loudly. The console (UCVM_CONSOLE) becomes stdout and
# the context directory (UCVM_CONTEXT_DIR) `context` under the test's directory.
GUEST_PATHS = {
    "/proc/cmdline": "cmdline",
    "/run/ucvm": "run/ucvm",
    "/sys/firmware/dmi/entries": "dmi",
    "/sys/class/dmi/id/product_uuid": "product_uuid",
    "/scratch/ucvm": "scratch/ucvm",
    "/etc/ucvm/version": "loader-version",
}
# Not a real boot: stay_up returns instead of sleeping forever, no console channel, no sync;
# unmounting and taking the NICs down (before a kexec) are only recorded: the host's stay up.
GUEST_PRELUDE = """
stay_up() { exit 0; }
start_console_channel() { :; }
sync() { :; }
umount() { echo "umount $*" >>"$FAKE_CALLS"; }
network_down() { echo "network_down" >>"$FAKE_CALLS"; }
"""
# A stand-in for the boot loader's block client: `get` copies $FAKE_MANIFEST (or fails as the
# real one does when the server does not answer: exit 2), `verify` drops the signature line
# (or refuses the file named by $FAKE_BAD_SIGNATURE, as a bad signature is refused: exit 4).
FAKE_BLOCKD = """\
#!/bin/sh
echo "$*" >>"$FAKE_CALLS"
case "$1" in
get)
	if [ -n "$FAKE_UNREACHABLE" ]; then
		echo "ucvm-blockd: server unreachable: $2 (5 attempts)" >&2
		exit 2
	fi
	cp "$FAKE_MANIFEST" "$3" ;;
kexec) echo "ucvm-blockd: kexec_file_load: Operation not permitted" >&2; exit 1 ;;
verify)
	if [ -n "$FAKE_BAD_SIGNATURE" ] && [ "$3" = "$FAKE_BAD_SIGNATURE" ]; then
		echo "ucvm-blockd: $3: the signature does not verify" >&2
		exit 4
	fi
	grep -v '^signature ' "$3" >"$4" ;;
*) exit 1 ;;
esac
"""
INSTANCE_UUID = "5f0c3e8a-2b1d-4c6e-9a7f-0e1d2c3b4a59"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# (tag, branch, published, image bytes), in publish order.
SNAPSHOTS = [
    ("1.0", "prod", "2026-11-01T10:00:00Z", 90177536),
    ("1.1", "prod", "2026-11-10T09:30:00Z", 94371840),
    ("1.2-rc1", "testing", "2026-11-15T14:00:00Z", 98304000),
    ("1.2", "prod", "2026-11-20T08:15:00Z", 98304000),
    ("1.3-rc1", "testing", "2026-11-24T17:45:00Z", 102760448),
]
SNAPSHOT_LINES = {
    tag: f"snapshot {tag} {branch} {when} {sha(tag + '.img')} {size} 65536 {sha(tag + '.blocks')}"
    for tag, branch, when, size in SNAPSHOTS
}


def manifest(prod: str = "1.2", testing: str = "1.3-rc1") -> str:
    """A manifest body as docs/os-on-demand.md describes it, the branches at these heads."""
    return "".join(
        f"{line}\n"
        for line in [
            "ucvm-manifest 1",
            "repository ucvm-test",
            "serial 9",
            "published 2026-11-25T00:32:42Z",
            "default-branch prod",
            *SNAPSHOT_LINES.values(),
            f"branch prod {prod}",
            f"branch testing {testing}",
            "signature ed25519 0123456789abcdef c2lnbmF0dXJlIG9mIHRoZSBtYW5pZmVzdA==",
        ]
    )


def smbios_oem_strings(*strings: str) -> bytes:
    """A raw SMBIOS type 11 (OEM strings) structure, as /sys/firmware/dmi/entries/*/raw."""
    header = bytes([11, 5]) + (0x0B00).to_bytes(2, "little") + bytes([len(strings)])
    return header + b"".join(s.encode() + b"\0" for s in strings) + b"\0"


class Guest:
    """The initramfs functions (and the context phase's) in busybox sh on the host, their
    fixed paths under ``root``."""

    def __init__(self, root: Path) -> None:
        busybox = shutil.which("busybox")
        if busybox is None:
            pytest.skip("busybox is not installed")
        self.busybox = busybox
        self.root = root
        self.cmdline = "console=ttyS0"
        self.manifest = manifest()
        self.unreachable = False
        for directory in ("bin", "run/ucvm", "dmi", "scratch/ucvm"):
            (root / directory).mkdir(parents=True)
        (root / "product_uuid").write_text(f"{INSTANCE_UUID}\n")
        (root / "loader-version").write_text("0.1\n")
        blockd = root / "bin" / "ucvm-blockd"
        blockd.write_text(FAKE_BLOCKD)
        blockd.chmod(0o755)
        self.source = "\n".join(
            path.read_text()
            for path in (
                FUNCTIONS,
                CONTEXT_FUNCTIONS,
                PIN_FUNCTIONS,
                KEXEC_FUNCTIONS,
                *REBASE_FUNCTIONS,
            )
        )
        for path, replacement in GUEST_PATHS.items():
            new = replacement if replacement.startswith("/") else str(root / replacement)
            pattern = rf"(?<![\w./]){re.escape(path)}"
            self.source, count = re.subn(pattern, lambda _, new=new: new, self.source)
            if not count:
                pytest.fail(f"{FUNCTIONS} no longer uses {path}: update GUEST_PATHS")

    def context(self, **settings: str) -> None:
        """What the context phase keeps of the user-data's [ucernvm-begin] block: a file a
        key in the context directory, as apply_ucernvm_line writes it."""
        self.file("context").mkdir(exist_ok=True)
        for key, value in settings.items():
            self.file(f"context/{key}").write_text(f"{value}\n")

    def smbios(self, entry: str, raw: bytes) -> None:
        (self.root / "dmi" / entry).mkdir()
        (self.root / "dmi" / entry / "raw").write_bytes(raw)

    def file(self, path: str) -> Path:
        return self.root / path

    def calls(self) -> list[str]:
        calls = self.root / "blockd.calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def prints(self, script: str, stdin: str = "", **env: str) -> str:
        """Run ``script`` after sourcing the functions (``stdin`` its input, ``env`` more
        environment); what the console shows."""
        (self.root / "cmdline").write_text(f"{self.cmdline}\n")
        (self.root / "manifest").write_text(self.manifest)
        env = {
            **os.environ,
            "PATH": f"{self.root / 'bin'}:{os.environ['PATH']}",
            "FAKE_MANIFEST": str(self.root / "manifest"),
            "FAKE_CALLS": str(self.root / "blockd.calls"),
            "FAKE_UNREACHABLE": "1" if self.unreachable else "",
            "FAKE_BAD_SIGNATURE": "",
            "UCVM_CONSOLE": "/dev/stdout",
            "UCVM_CONTEXT_DIR": str(self.root / "context"),
            **env,
        }
        result = subprocess.run(
            [self.busybox, "sh", "-c", f"{self.source}\n{GUEST_PRELUDE}\n{script}"],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env=env,
        )
        return result.stdout
