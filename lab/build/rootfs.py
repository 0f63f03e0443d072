"""OS roots for the OS repository: a release of `releases.yaml` (lab.build.releases), built.

Each release has a shopping list and a small configuration overlay. It is built in five steps:

1. solve: the shopping list, solved by the project's ILP solver (HiGHS) against the live Debian
   indexes in /var/lib/apt/lists (the ones the build installs from), checked twice for closure
   (our rules and dose-distcheck), gives the closed list: every package, exactly versioned;
2. install: mmdebstrap, root mode, variant `custom`, installs exactly that list (`name=version`
   for every entry, nothing else; dpkg's database is compared with the list afterwards). apt
   reads the same index files the solver read (copied in, `--skip=update`), and the .debs come
   from, and go back to, the artifact store's `apt-archives/`, so a rebuild downloads nothing;
3. customise: the release's fixture .debs (lab.build.fixture_debs, `chroot dpkg -i`), the lab's
   own files and units, the release's overlay, the identity reset and the record
   (lab.build.os_files: ucvm-ready, ucvm-channel, DHCP, an empty /etc/machine-id, no SSH host
   keys, /etc/ucvm-release with `fixtures=`, ...), and the root password locked;
4. clamp every mtime to SOURCE_DATE_EPOCH (the newest index's Date, unless set), so that
5. the squashfs image (zstd) is byte-identical when nothing changed.

Everything is cached in the ArtifactStore by the hash of all inputs: the shopping list, the
overlay, the fixture .debs' SHA-256, os-files, the apt lists, this file and os_files.py, and the
versions of mmdebstrap and squashfs-tools. The contract with the boot loader is
docs/os-on-demand.md ("From /init to systemd"). The benchmarks' conventional full-disk image
of a release is bench/conventional.py's.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import shlex
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab import proc
from lab.artifacts import ArtifactStore, file_digest
from lab.build import fixture_debs, os_files
from lab.build.releases import Release
from lab.packages import closed_list, debian, explain, solve
from lab.packages.model import Package, Repository

ROOTFS_VERSION = "1"  # bump to rebuild every root after a change outside this file
ARCH = "amd64"
SUITE = "bookworm"
APT_LISTS = Path("/var/lib/apt/lists")
APT_HELPER = "/usr/lib/apt/apt-helper"
SQUASHFS_COMPRESSION = ("-comp", "zstd")
CHROOT_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"  # dpkg wants ldconfig and start-stop-daemon
FIXTURE_STAGE = "/tmp/ucvm-fixture-debs"  # in the root, while dpkg installs them


class RootfsError(RuntimeError):
    """A release could not be built: the message says which step failed and why."""


# --------------------------------------------------------------------------- the apt lists


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    component: str

    @property
    def line(self) -> str:
        return f"deb {self.uri} {self.suite} {self.component}"

    @property
    def prefix(self) -> str:
        """apt's file-name prefix of this source's lists (its URItoFileName)."""
        return self.uri.split("://", 1)[-1].rstrip("/").replace("/", "_") + f"_dists_{self.suite}"

    def packages_glob(self) -> str:
        return f"{self.prefix}_{self.component}_binary-{ARCH}_Packages*"

    def release_glob(self) -> str:
        return f"{self.prefix}_*Release*"


SOURCES = (
    AptSource("http://deb.debian.org/debian", SUITE, "main"),
    AptSource("http://deb.debian.org/debian", f"{SUITE}-updates", "main"),
    AptSource("http://deb.debian.org/debian-security", f"{SUITE}-security", "main"),
)


@dataclass(frozen=True)
class AptLists:
    """A snapshot of the apt lists, in the store: as apt keeps them (copied into the chroot,
    so that apt there installs from exactly the indexes the solver read) and decompressed."""

    lists: Path  # apt's files: Packages.* and InRelease of each source
    packages: tuple[Path, ...]  # the Packages indexes, decompressed, for the solver
    digests: dict[str, str] = field(hash=False)  # file name -> sha256 of apt's file
    epoch: int = 0  # the newest Date of the Release files: the build's SOURCE_DATE_EPOCH


def find_apt_lists(folder: Path = APT_LISTS) -> list[Path]:
    """Each source's Packages file and Release file(s) in ``folder``; missing ones are an error
    that says to run apt-get update."""
    found, missing = [], []
    for source in SOURCES:
        for pattern in (source.packages_glob(), source.release_glob()):
            matches = sorted(p for p in folder.glob(pattern) if p.is_file())
            found += matches
            if not matches:
                missing.append(f"{folder}/{pattern} ({source.line})")
    if missing:
        raise RootfsError(
            "apt lists missing: " + "; ".join(missing) + ". Run apt-get update (with these "
            "sources configured) and build again"
        )
    return found


def apt_lists(store: ArtifactStore, folder: Path = APT_LISTS) -> AptLists:
    """The current apt lists, snapshotted once per content (apt-get update only if missing)."""
    try:
        files = find_apt_lists(folder)
    except RootfsError:
        if folder != APT_LISTS or os.geteuid() != 0:
            raise
        proc.run("apt-get", "update", "-q", check=False, error=RootfsError)
        files = find_apt_lists(folder)  # still missing: the error says what
    digests = {p.name: file_digest(p) for p in files}

    def build(work: Path) -> None:
        (work / "lists").mkdir()
        (work / "packages").mkdir()
        for path in files:
            shutil.copy2(path, work / "lists" / path.name)
            if file_digest(work / "lists" / path.name) != digests[path.name]:
                raise RootfsError(f"{path} changed while it was copied (apt-get update?)")
            if "_Packages" in path.name:
                plain = work / "packages" / re.sub(r"_Packages.*", "_Packages", path.name)
                with plain.open("wb") as out:
                    proc.run(APT_HELPER, "cat-file", path, stdout=out, error=RootfsError)

    directory = store.get("apt-lists", {"apt_lists": digests}, build)
    packages = tuple(sorted((directory / "packages").iterdir()))
    return AptLists(directory / "lists", packages, digests, _newest_date(directory / "lists"))


def _newest_date(lists: Path) -> int:
    dates = []
    for path in lists.glob("*Release"):
        match = re.search(r"^Date: (.+)$", path.read_text(errors="replace"), re.MULTILINE)
        if match:
            dates.append(int(email.utils.parsedate_to_datetime(match.group(1)).timestamp()))
    return max(dates, default=0)


# --------------------------------------------------------------------------- solving


@dataclass
class Solved:
    repository: Repository
    wanted: list[solve.Wanted]
    packages: list[Package]
    info: dict[str, Any]


def solve_list(
    shopping_list: Path,
    lists: AptLists,
    store: ArtifactStore,
    extra: Sequence[solve.Wanted] = (),
) -> Solved:
    """The closed list of ``shopping_list`` (plus ``extra``) against the snapshot's indexes."""
    started = time.perf_counter()
    repository = debian.load_cached(list(lists.packages), store)
    try:
        wanted = solve.read_shopping_list(shopping_list, repository)
    except solve.ShoppingListError as error:
        raise RootfsError(f"shopping list against the live apt lists:\n{error}") from None
    listed = {w.name for w in wanted}
    for item in extra:
        if not item.candidates(repository):
            raise RootfsError(f"{item} is not in the apt lists ({lists.lists}); apt-get update?")
    wanted += [item for item in extra if item.name not in listed]
    model = solve.build_model(repository, wanted)
    solution = solve.solve(model, "highs")
    if solution.status == "infeasible":
        why = "\n".join(explain.explain(repository, wanted))
        raise RootfsError(f"{shopping_list}: no installable closed list:\n{why}")
    if not solution.optimal:
        raise RootfsError(f"{shopping_list}: HiGHS said {solution.status} ({solution.detail})")
    _check_closure(shopping_list, repository, solution.packages, wanted)
    info = {
        "objective": solution.objective,
        "solve_s": round(time.perf_counter() - started, 3),
        "required_not_in_list": required_missing(repository, solution.packages),
    }
    return Solved(repository, wanted, solution.packages, info)


def _check_closure(
    shopping_list: Path,
    repository: Repository,
    packages: Sequence[Package],
    wanted: Sequence[solve.Wanted],
) -> None:
    problems = closed_list.closure_problems(repository, packages, wanted)
    dose = closed_list.dose_distcheck(packages)
    if problems or not dose.ok:
        detail = "; ".join(problems[:10]) or dose.output[-2000:]
        raise RootfsError(f"{shopping_list}: the solver's list is not closed: {detail}")


def required_missing(repository: Repository, packages: Iterable[Package]) -> list[str]:
    """Priority: required names the list leaves out (each release's list says why)."""
    names = {p.name for p in packages}
    return sorted({p.name for p in repository.packages if p.priority == "required"} - names)


def write_closed_list(solved: Solved, lists: AptLists, shopping_list: Path, out: Path) -> Path:
    provenance = {
        "shopping_list": shopping_list.name,
        "shopping_list_sha256": file_digest(shopping_list),
        "indexes": [{"file": name, "sha256": digest} for name, digest in lists.digests.items()],
        "engine": "highs",
        "objective": solved.info["objective"],
    }
    closed_list.write_json(solved.packages, out / "closed-list.json", **provenance)
    closed_list.write_text(solved.packages, out / "closed-list.txt")
    return out / "closed-list.txt"


# --------------------------------------------------------------------------- installing


def apt_archive_name(entry: closed_list.Entry) -> str:
    """The name apt gives a downloaded .deb in /var/cache/apt/archives."""
    return f"{entry.name}_{entry.version.replace(':', '%3a')}_{entry.arch}.deb"


def stage_cached_debs(
    entries: Sequence[closed_list.Entry], archives: Path, stage: Path
) -> list[str]:
    """Hard-links the cached .debs of the list whose SHA-256 matches into ``stage``."""
    stage.mkdir(parents=True, exist_ok=True)
    staged = []
    for entry in entries:
        name = apt_archive_name(entry)
        cached = archives / name
        if cached.is_file() and file_digest(cached) == entry.sha256:
            os.link(cached, stage / name)
            staged.append(name)
    return staged


def keep_downloaded_debs(out: Path, archives: Path, staged: Iterable[str]) -> list[Path]:
    """Moves the .debs apt downloaded into the store's cache (each rename is atomic, so a
    concurrent build sees a whole file or none); returns them."""
    archives.mkdir(parents=True, exist_ok=True)
    new = [p for p in sorted(out.glob("*.deb")) if p.name not in set(staged)]
    kept = []
    for deb in new:
        os.replace(deb, archives / deb.name)
        kept.append(archives / deb.name)
    return kept


MERGED_USR = 'for d in bin sbin lib lib64; do ln -s usr/$d "$1/$d"; mkdir -p "$1/usr/$d"; done'


def mmdebstrap_command(
    entries: Sequence[closed_list.Entry],
    lists: AptLists,
    root: Path,
    stage: Path,
    out: Path,
    customize: Sequence[str] = (),
) -> list[str]:
    """mmdebstrap installing exactly ``entries``: variant custom (no package of its own choice),
    bookworm's merged /usr made as debootstrap does (usr-is-merged checks it), apt reading the
    snapshot's lists (--skip=update), the cached .debs synced in and the downloaded ones out."""
    include = ",".join(f"{e.name}={e.version}" for e in entries)
    return [
        "mmdebstrap", "--mode=root", "--variant=custom", "--format=directory", "--verbose",
        f"--architectures={ARCH}", "--skip=update", "--skip=essential/unlink",
        f"--include={include}",
        f"--setup-hook={MERGED_USR}",
        f"--setup-hook=sync-in {shlex.quote(str(lists.lists))} /var/lib/apt/lists/",
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
        f"--setup-hook=sync-in {shlex.quote(str(stage))} /var/cache/apt/archives/",
        *(f"--customize-hook={hook}" for hook in customize),
        f"--customize-hook=sync-out /var/cache/apt/archives {shlex.quote(str(out))}",
        SUITE, str(root), *(source.line for source in SOURCES),
    ]  # fmt: skip


def install(
    entries: Sequence[closed_list.Entry],
    lists: AptLists,
    root: Path,
    store: ArtifactStore,
    log: Path,
    *,
    epoch: int,
    customize: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs mmdebstrap; returns what it downloaded. RootfsError names the log on a failure."""
    if os.geteuid() != 0 or not shutil.which("mmdebstrap"):
        raise RootfsError("building an OS root needs root and mmdebstrap (its root mode)")
    work = root.parent
    stage, out = work / "debs-in", work / "debs-out"
    out.mkdir()
    archives = store.root / "apt-archives"
    staged = stage_cached_debs(entries, archives, stage)
    command = mmdebstrap_command(entries, lists, root, stage, out, customize)
    env = os.environ | {"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C.UTF-8"}
    with log.open("w") as stream:
        run = proc.run(
            *command, stdout=stream, merge_stderr=True, env=env, check=False, error=RootfsError
        )
    if run.returncode != 0:
        kept = store.root / "failed" / f"{work.name}.log"  # the build's directory goes away
        kept.parent.mkdir(exist_ok=True)
        shutil.copyfile(log, kept)
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise RootfsError(f"mmdebstrap failed (exit {run.returncode}); log: {kept}\n{tail}")
    downloaded = keep_downloaded_debs(out, archives, staged)
    shutil.rmtree(stage)
    shutil.rmtree(out)
    need = re.search(r"^Need to get (.+?) of archives", log.read_text(), re.MULTILINE)
    return {
        "cached_debs": len(staged),
        "downloaded_debs": len(downloaded),
        "downloaded_bytes": sum(p.stat().st_size for p in downloaded),
        "apt_need_to_get": need.group(1) if need else "?",
    }


def installed(root: Path) -> list[tuple[str, str, str, str]]:
    """(name, version, arch, status) of every package dpkg's database in ``root`` knows."""
    listing = _run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                   "-f", "${Package} ${Version} ${Architecture} ${db:Status-Abbrev}\n")  # fmt: skip
    return [tuple(line.split()[:4]) for line in listing.splitlines()]  # type: ignore[misc]


def package_mismatch(
    entries: Sequence[closed_list.Entry], packages: Sequence[tuple[str, str, str, str]]
) -> list[str]:
    """How the installed packages differ from the list: `+` installed but not listed, `-`
    listed but not installed, `≠` another version or architecture, `!` not fully installed."""
    listed = {e.name: (e.version, e.arch) for e in entries}
    found = {name: (version, arch) for name, version, arch, _ in packages}
    extra, missing = sorted(found.keys() - listed.keys()), sorted(listed.keys() - found.keys())
    lines = [f"+ {n} {found[n][0]} (installed, not in the list)" for n in extra]
    lines += [f"- {n} {listed[n][0]} (in the list, not installed)" for n in missing]
    lines += [
        f"≠ {n}: list {listed[n][0]} ({listed[n][1]}), installed {found[n][0]} ({found[n][1]})"
        for n in sorted(listed.keys() & found.keys())
        if listed[n] != found[n]
    ]
    lines += [f"! {n}: dpkg status {status}" for n, _, _, status in packages if status != "ii"]
    return lines


def check_installed(entries: Sequence[closed_list.Entry], root: Path) -> None:
    mismatch = package_mismatch(entries, installed(root))
    if mismatch:
        raise RootfsError(
            f"the root at {root} is not the closed list ({len(mismatch)} differences):\n"
            + "\n".join(mismatch)
        )


# --------------------------------------------------------------------------- customising


def _run(*command: str | Path, env: Mapping[str, str] | None = None) -> str:
    """``command``'s output; RootfsError naming it, its exit code and its stderr if it fails."""
    return proc.run(*command, env=env, error=RootfsError).stdout


def chroot(root: Path, *command: str, epoch: int | None = None) -> str:
    env = os.environ | ({"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else {})
    return _run("chroot", root, *command, env=env)


def install_fixture_debs(root: Path, release: Release, store: ArtifactStore, epoch: int) -> None:
    """The release's fixture .debs, by `chroot ROOT dpkg -i` (their postinsts run there), then
    checked in dpkg's database: each one installed (ii) at its version."""
    if not release.fixture_debs:
        return
    stage = root / FIXTURE_STAGE.lstrip("/")
    stage.mkdir(parents=True)
    try:
        debs = [fixture_debs.fixture_deb(key, store) for key in release.fixture_debs]
        for deb in debs:
            shutil.copyfile(deb, stage / deb.name)
        chroot(root, "/usr/bin/env", CHROOT_PATH, "dpkg", "--log=/dev/null", "-i",
               *(f"{FIXTURE_STAGE}/{deb.name}" for deb in debs), epoch=epoch)  # fmt: skip
    finally:
        shutil.rmtree(stage)
    found = {name: (version, status) for name, version, _, status in installed(root)}
    for spec in map(fixture_debs.fixture, release.fixture_debs):
        if found.get(spec.name) != (spec.version, "ii"):
            raise RootfsError(
                f"fixture .deb {spec.key}: dpkg -i in {root} left {spec.name} as "
                f"{found.get(spec.name, 'not installed')}; expected {spec.version} (ii)"
            )


def write_fixtures_record(root: Path, release: Release) -> None:
    """`fixtures=name=version,...` (empty without any) appended to /etc/ucvm-release."""
    record = root / os_files.RECORD.lstrip("/")
    line = f"fixtures={','.join(release.fixture_debs)}\n"
    os_files.install_file(root, os_files.RECORD, record.read_bytes() + line.encode())


def install_overlay(root: Path, release: Release) -> None:
    """The release's overlay files, owned by root, each with its mode (0644 unless its value
    names one); a symlink at the path is replaced, never written through (/usr/sbin/init)."""
    for path, content in sorted(release.overlay.items()):
        os_files.install_file(root, path, content.encode(), release.overlay_mode(path))


def customise(root: Path, release: Release, closed: Path, store: ArtifactStore, epoch: int) -> None:
    """The fixture .debs, the lab's files, the release's overlay, the identity files, and the
    record."""
    install_fixture_debs(root, release, store, epoch)
    os_files.install_os_files(root)
    os_files.install_file(root, "/etc/hostname", b"ucvm\n")
    install_overlay(root, release)
    os_files.reset_identity(root)
    os_files.remove_ssh_host_keys(root)
    chroot(root, "passwd", "--lock", "root", epoch=epoch)
    chroot(root, "systemctl", "enable", *os_files.units_to_enable(root), epoch=epoch)
    chroot(root, "systemctl", "mask", *os_files.UNITS_MASKED, epoch=epoch)
    os_files.write_record(root, release, closed, epoch)
    write_fixtures_record(root, release)


def clamp_mtimes(root: Path, epoch: int) -> int:
    """Sets every mtime later than ``epoch`` to ``epoch`` (tar's --clamp-mtime); returns how
    many. Older ones (the packages' own) stay, so Python's .pyc files stay valid."""
    clamped = 0
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in [*files, *dirs]:
            clamped += _clamp(os.path.join(folder, name), epoch)
    return clamped + _clamp(str(root), epoch)


def _clamp(path: str, epoch: int) -> int:
    if os.lstat(path).st_mtime <= epoch:
        return 0
    os.utime(path, (epoch, epoch), follow_symlinks=False)
    return 1


def make_squashfs(root: Path, image: Path, epoch: int, compression: Sequence[str] = ()) -> None:
    _run("mksquashfs", root, image, "-noappend", "-quiet", "-no-progress",
         *(compression or SQUASHFS_COMPRESSION), "-mkfs-time", str(epoch))  # fmt: skip


def disk_usage(root: Path) -> int:
    """Bytes the tree takes on disk (hard links once), like du -s."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            stat = os.lstat(os.path.join(folder, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class ReleaseArtifact:
    tag: str
    branch: str
    squashfs: Path
    closed_list: Path
    record: dict[str, str] = field(hash=False)  # /etc/ucvm-release
    root: Path  # the unpacked tree
    directory: Path  # the artifact: build.json, build.log, closed-list.json, ...
    info: dict[str, Any] = field(hash=False)  # build.json: sizes, counts, timings


def release_inputs(
    release: Release, lists: AptLists, epoch: int, store: ArtifactStore | None = None
) -> dict[str, Any]:
    """Everything a release's root depends on; its hash names the artifact. The fixture .debs
    are built (once, in ``store``) for their hashes."""
    return {
        "rootfs": ROOTFS_VERSION,
        "code": [file_digest(Path(__file__)), file_digest(Path(os_files.__file__))],
        "tag": release.tag,
        "branch": release.branch,
        "shopping_list": [release.shopping_list.name, file_digest(release.shopping_list)],
        "overlay": release.overlay,
        "overlay_modes": {path: f"{mode:04o}" for path, mode in release.overlay_modes.items()},
        "fixture_debs": {
            key: file_digest(fixture_debs.fixture_deb(key, store)) for key in release.fixture_debs
        },
        "os_files": os_files.tree_digest(os_files.OS_FILES),
        "apt_lists": lists.digests,
        "source_date_epoch": epoch,
        "tools": proc.package_versions("mmdebstrap", "squashfs-tools"),
    }


def source_date_epoch(lists: AptLists) -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH") or lists.epoch)


def build_release(release: Release, store: ArtifactStore | None = None) -> ReleaseArtifact:
    """The release's root and squashfs image, built once per input hash (safe under xdist)."""
    store = store or ArtifactStore()
    lists = apt_lists(store)
    epoch = source_date_epoch(lists)

    def build(work: Path) -> None:
        build_root_into(work, release, lists, store, epoch)

    directory = store.get("os-root", release_inputs(release, lists, epoch, store), build)
    return release_artifact(directory)


def release_artifact(directory: Path) -> ReleaseArtifact:
    info = json.loads((directory / "build.json").read_text())
    return ReleaseArtifact(
        tag=info["tag"],
        branch=info["branch"],
        squashfs=directory / "image.squashfs",
        closed_list=directory / "closed-list.txt",
        record=os_files.read_record(directory / "root"),
        root=directory / "root",
        directory=directory,
        info=info,
    )


def build_root_into(
    work: Path,
    release: Release,
    lists: AptLists,
    store: ArtifactStore,
    epoch: int,
    *,
    squashfs: bool = True,
) -> dict[str, Any]:
    """Solve, install, check, customise, clamp and (unless told not to) pack into ``work``:
    root/, closed-list.txt/.json, build.log, build.json and image.squashfs."""
    timings: dict[str, float] = {}
    with timed(timings, "solve"):
        solved = solve_list(release.shopping_list, lists, store)
        closed = write_closed_list(solved, lists, release.shopping_list, work)
    entries = closed_list.entries(solved.packages)
    with timed(timings, "mmdebstrap"):
        fetched = install(entries, lists, work / "root", store, work / "build.log", epoch=epoch)
    with timed(timings, "customise"):
        check_installed(entries, work / "root")
        customise(work / "root", release, closed, store, epoch)
        clamp_mtimes(work / "root", epoch)
    info = build_info(release, solved, fetched, work / "root", epoch)
    if squashfs:
        with timed(timings, "squashfs"):
            make_squashfs(work / "root", work / "image.squashfs", epoch)
        info["squashfs_bytes"] = (work / "image.squashfs").stat().st_size
        info["squashfs_sha256"] = file_digest(work / "image.squashfs")
    info["timings_s"] = timings
    (work / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """``with timed(timings, "step"):`` records the step's wall-clock seconds."""
    started = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - started, 2)


def build_info(
    release: Release, solved: Solved, fetched: dict[str, Any], root: Path, epoch: int
) -> dict[str, Any]:
    return {
        "tag": release.tag,
        "branch": release.branch,
        "packages": len(solved.packages),
        "debs_bytes": sum(p.size for p in solved.packages),
        "root_bytes": disk_usage(root),
        "required_not_in_list": solved.info["required_not_in_list"],
        "solve_s": solved.info["solve_s"],
        **fetched,
        "source_date_epoch": epoch,
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
