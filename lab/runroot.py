"""The run root: the one directory under which runs keep their files, and which the sweeper
empties of dead runs. Because the sweeper deletes there, the lab refuses a root that could
hold anything but its runs, and a root that another user could plant directories in.

Refused: a relative path; `/`; a home directory (/root, /home, /home/NAME, any account's
home), or a directory that holds one; the lab's checkout, anything in it or above it; a system
directory or anything in it (/bin /boot /dev /etc /lib* /opt /proc /run /sbin /srv /sys /usr
/var/lib), and the shared /tmp, /var, /var/tmp, /var/cache, /var/log themselves (a directory
of its own below them, such as /var/tmp/ucvm-lab, is fine). An existing root must be a real
directory (not a symbolic link) owned by root or by the current user, with mode 0711 or 0700.
A missing root is created with mode 0711 (QEMU, running as libvirt-qemu, only traverses it).

Checked at the edge (lab.matrix, with the place in matrix.yaml) and again, defensively, by
the run and the sweeper (lab.run) before they create or delete anything.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path, PurePosixPath

CHECKOUT = Path(__file__).resolve().parent.parent  # the repository: the parent of lab/
DIR_MODE = 0o711
ROOT_MODES = (0o711, 0o700)
EXAMPLE = "/var/tmp/ucvm-lab"

# Nothing in these, nor these themselves, nor a directory above them.
SYSTEM_TREES = tuple(
    PurePosixPath(path)
    for path in ("/bin", "/boot", "/dev", "/etc", "/opt", "/proc", "/run", "/sbin", "/srv",
                 "/sys", "/usr", "/var/lib")
)  # fmt: skip
# Shared directories: a directory of its own below them is fine, they themselves are not.
SHARED_DIRS = tuple(map(PurePosixPath, ("/tmp", "/var", "/var/tmp", "/var/cache", "/var/log")))


class RunRootError(ValueError):
    """A run root the lab will not use; the message says why and what to do."""


def fix(root: Path | str) -> str:
    return f"chown root: {root} && chmod 0711 {root}"


def problem(root: str | Path) -> str | None:
    """Why ``root`` cannot be the run root (None if it can): its path, then, when it exists,
    what is there (type, owner, mode)."""
    return path_problem(str(root)) or state_problem(Path(root))


def check(root: Path) -> Path:
    found = problem(root)
    if found:
        raise RunRootError(f"run root: {found}")
    return root


def path_problem(root: str) -> str | None:
    if not root:
        return "expected an absolute path; found an empty string"
    if not root.startswith("/"):
        return f"expected an absolute path; found {root!r} (relative to the working directory)"
    spelled = PurePosixPath(os.path.normpath(root))
    real = PurePosixPath(os.path.realpath(root))  # a symlink on the way must not lead inside
    for candidate in dict.fromkeys((spelled, real)):
        found = _protected(candidate)
        if found:
            shown = str(spelled) if candidate == spelled else f"{spelled} (really {candidate})"
            return f"{shown} {found}; use a directory the lab owns alone, e.g. {EXAMPLE}"
    return None


def _protected(path: PurePosixPath) -> str | None:
    if path == PurePosixPath("/"):
        return "is the filesystem root: the sweeper would consider everything on the machine"
    for tree in (*SYSTEM_TREES, PurePosixPath(CHECKOUT)):
        what = "the lab's checkout" if tree == PurePosixPath(CHECKOUT) else "a system directory"
        if path.is_relative_to(tree):
            return f"is {what} {tree}" if path == tree else f"is inside {what} {tree}"
        if tree.is_relative_to(path):
            return f"holds {what} {tree}"
    if path.parts[1].startswith("lib"):
        return f"is inside the system directory /{path.parts[1]}"
    for shared in SHARED_DIRS:
        if shared.is_relative_to(path):
            return f"is the shared directory {shared} itself (or holds it)"
    homes = _homes()
    if path in homes:
        return "is a home directory"
    for home in sorted(homes):
        if home.is_relative_to(path):
            return f"holds the home directory {home}"
    return None


def _homes() -> set[PurePosixPath]:
    homes = {PurePosixPath(p) for p in ("/root", "/home")}
    homes |= {PurePosixPath(entry.pw_dir) for entry in pwd.getpwall() if entry.pw_dir != "/"}
    if Path("/home").is_dir():
        homes |= {PurePosixPath(p) for p in Path("/home").iterdir()}
    return homes


def state_problem(root: Path) -> str | None:
    """What is wrong with what exists at ``root`` (None if nothing exists there yet)."""
    try:
        info = root.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return (
            f"{root} is a symbolic link (to {os.readlink(root)}); name the real directory in "
            "run_root, or remove the link and let the lab create the directory"
        )
    if not stat.S_ISDIR(info.st_mode):
        return f"{root} exists and is not a directory; name a directory for the run root"
    if info.st_uid not in (0, os.geteuid()):
        return (
            f"{root} is owned by {_user(info.st_uid)}, not by root or by you "
            f"({_user(os.geteuid())}): another user could plant or swap run directories in it; "
            f"{fix(root)}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode not in ROOT_MODES:
        return (
            f"{root} has mode {mode:04o}; the run root must be 0711 (or 0700) so that no other "
            f"user can list it or create directories in it; {fix(root)}"
        )
    return None


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def make_dir(path: Path, mode: int = DIR_MODE) -> bool:
    """Create the directory ``path`` with ``mode`` (whatever the umask) unless it exists; never
    through a symbolic link at ``path`` itself. True if this call created it."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return False
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(descriptor, mode)
    finally:
        os.close(descriptor)
    return True


def make_root(root: Path) -> Path:
    """The run root, checked, and created (0711) if it does not exist yet."""
    check(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    make_dir(root)
    return check(root)  # whatever was there or raced in: a symlink, another owner, a mode
