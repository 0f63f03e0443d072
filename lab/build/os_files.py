"""What the lab itself writes into every OS root, beside the packages and the release's overlay.

- its own files, from lab/build/os-files/: the ready marker, the command channel, the SSH host
  key maker, DHCP for networkd, ShowStatus=no (docs/os-on-demand.md);
- the units it enables (and the one it masks: an appliance has no interactive first boot);
- the identity reset: an empty /etc/machine-id and /etc/fstab, no resolv.conf and no SSH host
  keys from the build (each instance makes its own at first boot);
- the record: /etc/ucvm-release and the closed list under /usr/share/ucvm.

A release's overlay may write none of these paths (lab.build.releases checks it against
`written_by_the_lab()`). lab.build.rootfs applies all of it in its customise step.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lab.artifacts import file_digest

if TYPE_CHECKING:  # releases.py imports this module (the overlay's reserved paths)
    from lab.build.releases import Release

OS_FILES = Path(__file__).resolve().parent / "os-files"
# files of the record, which no overlay may write
RECORD = "/etc/ucvm-release"
CLOSED_LIST = "/usr/share/ucvm/closed-list.txt"
RESERVED = (RECORD, "/usr/share/ucvm", "/usr/lib/ucvm", "/etc/machine-id", "/etc/fstab")
UNITS_ENABLED = (
    "ucvm-ready.service",
    "ucvm-channel.service",
    "ucvm-ssh-hostkeys.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "ucvm-update-check.timer",
)
# an appliance has no interactive first boot: with an empty /etc/machine-id, systemd-firstboot
# would ask for a locale and a time zone on the console and wait for an answer forever
UNITS_MASKED = ("systemd-firstboot.service",)


def written_by_the_lab() -> tuple[str, ...]:
    """The paths (files, or folders with everything under them) no overlay may write."""
    return (*RESERVED, *lab_paths())


def lab_paths() -> list[str]:
    """The paths in the root that lab/build/os-files/ writes, e.g. /usr/lib/ucvm/ucvm-ready."""
    return sorted("/" + p.relative_to(OS_FILES).as_posix() for p in _tree_files(OS_FILES))


def _tree_files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*") if p.is_file() and not p.name.endswith((".pyc", "~")))


def tree_digest(top: Path) -> str:
    """One hash over the relative paths, modes and contents of the files under ``top``."""
    digest = hashlib.sha256()
    for path in _tree_files(top):
        mode = "755" if os.access(path, os.X_OK) else "644"
        digest.update(f"{path.relative_to(top).as_posix()}\0{mode}\0".encode())
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def install_file(root: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    """Writes ``data`` at ``path`` (absolute, inside ``root``), replacing a file or symlink."""
    target = root / path.lstrip("/")
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.write_bytes(data)
    target.chmod(mode)


def install_os_files(root: Path, source: Path = OS_FILES) -> None:
    for path in _tree_files(source):
        mode = 0o755 if os.access(path, os.X_OK) else 0o644
        install_file(root, "/" + path.relative_to(source).as_posix(), path.read_bytes(), mode)


def units_to_enable(root: Path) -> list[str]:
    """UNITS_ENABLED that the root has; the SSH host key maker only where sshd is."""
    present = [u for u in UNITS_ENABLED if (root / "usr/lib/systemd/system" / u).exists()]
    if not (root / "etc/ssh/sshd_config").exists():  # a release without openssh-server
        present.remove("ucvm-ssh-hostkeys.service")
    return present


def reset_identity(root: Path) -> None:
    """What must not come from the build host, or must be made at first boot."""
    install_file(root, "/etc/machine-id", b"")
    install_file(root, "/etc/fstab", b"")
    (root / "etc/.resolv.conf.systemd-resolved.bak").unlink(missing_ok=True)  # the host's
    resolv = root / "etc/resolv.conf"
    if not resolv.is_symlink():  # no systemd-resolved: no copy of the build host's either
        install_file(root, "/etc/resolv.conf", b"")
    for partial in ("var/cache/apt/archives/partial", "var/lib/apt/lists/partial"):
        if (root / partial).is_dir():  # apt left them to _apt, or not, from one run to the next
            os.chown(root / partial, 0, 0)


def remove_ssh_host_keys(root: Path) -> list[str]:
    """No SSH host keys in the image (openssh-server's postinst made some): a key in a
    published snapshot would be every instance's. Each instance makes its own at its first
    boot (ucvm-ssh-hostkeys.service). Returns the names removed."""
    removed = sorted(key.name for key in (root / "etc/ssh").glob("ssh_host_*"))
    for name in removed:
        (root / "etc/ssh" / name).unlink()
    return removed


def write_record(root: Path, release: Release, closed: Path, epoch: int) -> dict[str, str]:
    install_file(root, CLOSED_LIST, closed.read_bytes())
    record = {
        "release": release.tag,
        "branch": release.branch,
        "shopping_list": release.shopping_list.name,
        "shopping_list_sha256": file_digest(release.shopping_list),
        "closed_list_sha256": file_digest(closed),
        "packages": str(len(closed.read_text().splitlines())),
        "built": datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    install_file(root, RECORD, "".join(f"{k}={v}\n" for k, v in record.items()).encode())
    return record


def read_record(root: Path) -> dict[str, str]:
    text = (root / RECORD.lstrip("/")).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
