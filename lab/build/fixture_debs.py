"""Tiny real .debs for the rebase suite's package and account conflicts (suites/rebase).

Each one is built with dpkg-deb from a spec in this file, reproducibly (SOURCE_DATE_EPOCH, every
mtime set to FIXTURE_EPOCH, owners root:root, xz), and cached in the artifact store by the hash
of its inputs (the spec, this file, dpkg's version): the same inputs give the same bytes.

- `ucvm-fixture-local 1.0`: /usr/bin/ucvm-fixture-local and the conffile
  /etc/ucvm-fixture-local.conf. In no release: a cell installs it locally on FROM.
- `ucvm-fixture-svc 1.0`: /usr/share/ucvm-fixture-svc/version, no account. A cell installs it
  locally on a FROM that does not ship the package.
- `ucvm-fixture-svc 2.0` (shipped by 1.2): the same file, new content, and a postinst that adds
  the system account ucvmsvc at uid and gid 1000, owning /var/lib/ucvmsvc. 1000 is the id
  `useradd` gives the first local user (alice, in the cell), so the two collide.
- `ucvm-fixture-svc 3.0` (shipped by 2.0-dev): as 2.0, plus ucvmsvc2 at uid and gid 1001.

releases.yaml names them per release (`fixture_debs: [name=version]`, lab.build.releases checks
the names against FIXTURE_DEBS); lab.build.rootfs installs them after the closed list.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab import proc
from lab.artifacts import ArtifactStore, file_digest

FIXTURE_EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z: every mtime and the ar header's date
MAINTAINER = "ucvm-lab <ucvm-lab@localhost>"


class FixtureDebError(RuntimeError):
    """A fixture .deb is unknown or could not be built; the message says which and why."""


@dataclass(frozen=True)
class Account:
    """A system account a fixture's postinst adds: user and group of the same name and id."""

    name: str
    uid: int  # the group's gid too
    home: str  # a directory the package ships, chowned to the account by the postinst


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute, in the root
    content: str
    mode: int = 0o644
    conffile: bool = False


@dataclass(frozen=True)
class FixtureDeb:
    name: str
    version: str
    summary: str
    files: tuple[FileEntry, ...]
    accounts: tuple[Account, ...] = ()  # each one's home is a directory the package ships
    depends: str = ""

    @property
    def key(self) -> str:
        """`name=version`, as releases.yaml's `fixture_debs` names it."""
        return f"{self.name}={self.version}"

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version}_all.deb"

    def postinst(self) -> str | None:
        """The maintainer script that adds the accounts (idempotent), or None without any."""
        if not self.accounts:
            return None
        lines = ["#!/bin/sh", "set -e", '[ "$1" = configure ] || exit 0']
        for account in self.accounts:
            lines += [
                f"getent group {account.name} >/dev/null ||",
                f"\tgroupadd --system --gid {account.uid} {account.name}",
                f"getent passwd {account.name} >/dev/null ||",
                f"\tuseradd --system --uid {account.uid} --gid {account.uid} --no-create-home "
                f"--no-log-init --home-dir {account.home} --shell /usr/sbin/nologin "
                f"{account.name}",
                f"chown {account.name}:{account.name} {account.home}",
            ]
        return "\n".join(lines) + "\n"


def _svc(version: str, accounts: tuple[Account, ...]) -> FixtureDeb:
    return FixtureDeb(
        name="ucvm-fixture-svc",
        version=version,
        summary="a package newer releases ship, with system accounts",
        files=(FileEntry("/usr/share/ucvm-fixture-svc/version", f"{version}\n"),),
        accounts=accounts,
        depends="passwd" if accounts else "",  # groupadd and useradd
    )


UCVMSVC = Account("ucvmsvc", 1000, "/var/lib/ucvmsvc")
UCVMSVC2 = Account("ucvmsvc2", 1001, "/var/lib/ucvmsvc2")
LOCAL_SCRIPT = """\
#!/bin/sh
# ucvm-fixture-local: installed locally by the rebase suite, shipped by no release
cat /etc/ucvm-fixture-local.conf
"""
FIXTURE_DEBS: dict[str, FixtureDeb] = {
    deb.key: deb
    for deb in (
        FixtureDeb(
            name="ucvm-fixture-local",
            version="1.0",
            summary="a package installed locally, in no release",
            files=(
                FileEntry("/usr/bin/ucvm-fixture-local", LOCAL_SCRIPT, 0o755),
                FileEntry("/etc/ucvm-fixture-local.conf", "greeting=local\n", conffile=True),
            ),
            depends="coreutils",
        ),
        _svc("1.0", ()),
        _svc("2.0", (UCVMSVC,)),
        _svc("3.0", (UCVMSVC, UCVMSVC2)),
    )
}


def fixture(key: str) -> FixtureDeb:
    """The spec named `name=version`; FixtureDebError lists the known ones otherwise."""
    try:
        return FIXTURE_DEBS[key]
    except KeyError:
        raise FixtureDebError(
            f"no fixture .deb {key!r}; expected one of: {', '.join(FIXTURE_DEBS)} "
            "(FIXTURE_DEBS in lab/build/fixture_debs.py)"
        ) from None


# --------------------------------------------------------------------------- building


def _control(deb: FixtureDeb) -> str:
    installed_kib = sum(-(-len(f.content.encode()) // 1024) for f in deb.files) or 1
    fields = [
        f"Package: {deb.name}",
        f"Version: {deb.version}",
        "Architecture: all",
        f"Maintainer: {MAINTAINER}",
        f"Installed-Size: {installed_kib}",
        *([f"Depends: {deb.depends}"] if deb.depends else []),
        "Section: misc",
        "Priority: optional",
        f"Description: ucvm-lab rebase fixture: {deb.summary}",
        " Built by lab/build/fixture_debs.py for the rebase suite (suites/rebase).",
    ]
    return "\n".join(fields) + "\n"


def _write(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)


def _tree(deb: FixtureDeb, tree: Path) -> None:
    """The package's files and DEBIAN/ (control, md5sums, conffiles, postinst) under ``tree``."""
    md5sums = []
    for account in deb.accounts:
        (tree / account.home.lstrip("/")).mkdir(parents=True)
    for entry in deb.files:
        _write(tree / entry.path.lstrip("/"), entry.content, entry.mode)
        if not entry.conffile:  # dpkg keeps a conffile's md5 in the status (Conffiles)
            md5sums.append(f"{hashlib.md5(entry.content.encode()).hexdigest()}  {entry.path[1:]}")
    control = tree / "DEBIAN"
    _write(control / "control", _control(deb), 0o644)
    _write(control / "md5sums", "".join(f"{line}\n" for line in sorted(md5sums)), 0o644)
    conffiles = sorted(f.path for f in deb.files if f.conffile)
    if conffiles:
        _write(control / "conffiles", "".join(f"{path}\n" for path in conffiles), 0o644)
    if script := deb.postinst():
        _write(control / "postinst", script, 0o755)


def _fix_metadata(tree: Path) -> None:
    """Directories 0755 (the temporary one is 0700), every mtime FIXTURE_EPOCH."""
    for folder, dirs, files in os.walk(tree, topdown=False):
        for name in files:
            os.utime(os.path.join(folder, name), (FIXTURE_EPOCH, FIXTURE_EPOCH))
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
            os.utime(os.path.join(folder, name), (FIXTURE_EPOCH, FIXTURE_EPOCH))
    tree.chmod(0o755)
    os.utime(tree, (FIXTURE_EPOCH, FIXTURE_EPOCH))


def build_deb(deb: FixtureDeb, out_dir: Path) -> Path:
    """``deb`` built into ``out_dir`` (no cache); FixtureDebError if dpkg-deb fails."""
    out = out_dir / deb.filename
    with tempfile.TemporaryDirectory(prefix="ucvm-fixture-deb-") as work:
        tree = Path(work) / "tree"
        tree.mkdir()
        _tree(deb, tree)
        _fix_metadata(tree)
        env = os.environ | {"SOURCE_DATE_EPOCH": str(FIXTURE_EPOCH)}
        proc.run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", tree, out, env=env,
                 error=FixtureDebError, what=f"dpkg-deb --build {deb.key}")  # fmt: skip
    return out


def deb_inputs(deb: FixtureDeb) -> dict[str, Any]:
    """What the .deb's bytes depend on; its hash names the artifact."""
    return {
        "fixture_deb": asdict(deb),
        "code": file_digest(Path(__file__)),
        "tools": proc.package_versions("dpkg"),
        "epoch": FIXTURE_EPOCH,
    }


def fixture_deb(key: str, store: ArtifactStore | None = None) -> Path:
    """The .deb named `name=version`, built once per input hash (safe under xdist)."""
    deb = fixture(key)
    store = store or ArtifactStore()

    def build(work: Path) -> None:
        build_deb(deb, work)

    return store.get("fixture-deb", deb_inputs(deb), build) / deb.filename
