"""OS roots for the OS repository, and the conventional full-disk image of the same release.

`releases.yaml` names the releases the nightly publishes. Each has a shopping list and a small
configuration overlay. A release is built in five steps:

1. solve: the shopping list, solved by the project's ILP solver (HiGHS) against the live Debian
   indexes in /var/lib/apt/lists (the ones the build installs from), checked twice for closure
   (our rules and dose-distcheck), gives the closed list: every package, exactly versioned;
2. install: mmdebstrap, root mode, variant `custom`, installs exactly that list (`name=version`
   for every entry, nothing else; dpkg's database is compared with the list afterwards). apt
   reads the same index files the solver read (copied in, `--skip=update`), and the .debs come
   from, and go back to, the artifact store's `apt-archives/`, so a rebuild downloads nothing;
3. customise: the lab's own files (`os-files/`: ucvm-ready, ucvm-channel, DHCP, ShowStatus=no),
   the release's overlay, an empty /etc/machine-id and /etc/fstab, the root password locked, no
   SSH host keys (each instance makes its own at first boot), and the record: /etc/ucvm-release,
   /usr/share/ucvm/closed-list.txt;
4. clamp every mtime to SOURCE_DATE_EPOCH (the newest index's Date, unless set), so that
5. the squashfs image (zstd) is byte-identical when nothing changed.

Everything is cached in the ArtifactStore by the hash of all inputs: the shopping list, the
overlay, os-files, the apt lists, this file, and the versions of mmdebstrap and squashfs-tools.
The contract with the boot loader is docs/os-on-demand.md ("From /init to systemd").

`conventional_image` is the benchmarks' baseline: the same release plus Debian's kernel (the
package the boot loader uses) and initramfs-tools, as an ext4 file system in a compressed qcow2,
with the kernel and Debian's own initrd beside it for a direct kernel boot.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationError
from pydantic_core import ErrorDetails

from lab import matrix
from lab.artifacts import ArtifactStore, file_digest
from lab.build import closed_list, explain, index, solver
from lab.build import kernel as kernel_pkg
from lab.build.packages import Package, Repository

HERE = Path(__file__).resolve().parent
OS_FILES = HERE / "os-files"
RELEASES_FILE = HERE.parents[1] / "releases.yaml"
ROOTFS_VERSION = "1"  # bump to rebuild every root after a change outside this file
ARCH = "amd64"
SUITE = "bookworm"
NAME = re.compile(matrix.NAME_PATTERN)  # a tag or a branch (docs/os-on-demand.md)
APT_LISTS = Path("/var/lib/apt/lists")
APT_HELPER = "/usr/lib/apt/apt-helper"
CONVENTIONAL_CMDLINE = "root=/dev/vda rw console=ttyS0,115200"
# what the conventional image adds to the release besides the kernel: Debian's initramfs
# generator, with what a Debian install has beside it (initramfs-tools-core recommends zstd,
# its default compressor, and busybox), and e2fsprogs for the ext4 root (Priority: required)
CONVENTIONAL_EXTRAS = ("initramfs-tools", "zstd", "busybox", "e2fsprogs")
SQUASHFS_COMPRESSION = ("-comp", "zstd")
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
)
# an appliance has no interactive first boot: with an empty /etc/machine-id, systemd-firstboot
# would ask for a locale and a time zone on the console and wait for an answer forever
UNITS_MASKED = ("systemd-firstboot.service",)


class ReleaseError(matrix.MatrixError):
    """Problems in releases.yaml (or a list it names); `str(error)` has one line per problem.
    Reported as matrix.yaml's are, with the same validation helpers."""


class RootfsError(RuntimeError):
    """A release could not be built: the message says which step failed and why."""


# --------------------------------------------------------------------------- releases.yaml


@dataclass(frozen=True)
class Release:
    tag: str
    branch: str
    shopping_list: Path  # absolute
    overlay: dict[str, str] = field(hash=False)  # absolute path in the root -> content
    description: str = ""


@dataclass(frozen=True)
class ReleaseSet:
    path: Path
    default_branch: str
    releases: tuple[Release, ...]  # publish order, oldest first

    def head(self, branch: str) -> Release:
        """The last release published on ``branch``."""
        return [r for r in self.releases if r.branch == branch][-1]

    @property
    def default(self) -> Release:
        """The release `newest` means: the head of the default branch."""
        return self.head(self.default_branch)


def _check_overlay_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"expected an absolute path in the root, e.g. /etc/motd; found {path!r}")
    if posixpath.normpath(path) != path or path == "/":
        raise ValueError(f"expected a plain file path (no //, ., .. or trailing /); found {path!r}")
    if any(path == r or path.startswith(r + "/") for r in (*RESERVED, *lab_paths())):
        raise ValueError(
            f"{path} is written by the lab itself (lab/build/os-files/ or the release record); "
            "choose another path, e.g. a drop-in under /etc/<program>.d/"
        )
    return path


class _ReleaseSchema(matrix._Schema):
    tag: matrix.Name
    branch: matrix.Name
    shopping_list: str
    description: str = ""
    overlay: dict[Annotated[str, AfterValidator(_check_overlay_path)], str] = Field(
        default_factory=dict
    )


class _ReleasesSchema(matrix._Schema):
    default_branch: matrix.Name
    releases: Annotated[list[_ReleaseSchema], Field(min_length=1)]


def load_releases(path: Path = RELEASES_FILE) -> list[Release]:
    """The releases of ``path``, in publish order; ReleaseError lists every problem at once."""
    return list(load_release_set(path).releases)


def load_release_set(path: Path = RELEASES_FILE) -> ReleaseSet:
    try:
        tree = matrix._read_yaml(path)
    except matrix.MatrixError as error:
        raise ReleaseError(*error.problems) from None
    try:
        schema = _ReleasesSchema.model_validate(tree, strict=True)
        problems: list[matrix._Problem] = []
    except ValidationError as error:
        schema, problems = None, [_problem(detail) for detail in error.errors()]
    problems += _plain_problems(path, tree)
    messages = _file_messages(path, tree, problems) + _list_problems(path, tree)
    if schema is None or messages:
        raise ReleaseError(*messages)
    return _release_set(path, schema)


def _release_set(path: Path, schema: _ReleasesSchema) -> ReleaseSet:
    releases = tuple(
        Release(
            tag=item.tag,
            branch=item.branch,
            shopping_list=(path.parent / item.shopping_list).resolve(),
            overlay=dict(item.overlay),
            description=item.description,
        )
        for item in schema.releases
    )
    return ReleaseSet(path, schema.default_branch, releases)


def _problem(error: ErrorDetails) -> matrix._Problem:
    """matrix.py's translation of a pydantic error, with this file's schema for unknown keys."""
    if error["type"] != "extra_forbidden":
        return matrix._problem_from_pydantic(error)
    loc = tuple(error["loc"])
    schema = _ReleaseSchema if loc[0] == "releases" else _ReleasesSchema
    allowed = ", ".join(schema.model_fields)
    return matrix._Problem(loc, f"unknown key {loc[-1]!r}; allowed keys: {allowed}", at_key=True)


def _items(tree: Any) -> list[tuple[int, dict[str, Any]]]:
    releases = tree.get("releases") if isinstance(tree, dict) else None
    if not isinstance(releases, list):
        return []
    return [(i, item) for i, item in enumerate(releases) if isinstance(item, dict)]


def _plain_problems(path: Path, tree: Any) -> list[matrix._Problem]:
    return [
        *_duplicate_tags(tree),
        *_missing_lists(path, tree),
        *_default_branch_problems(tree),
    ]


def _duplicate_tags(tree: Any) -> Iterator[matrix._Problem]:
    first: dict[str, int] = {}
    for i, item in _items(tree):
        tag = item.get("tag")
        if not isinstance(tag, str):
            continue
        if tag in first:
            line = matrix._position(tree, ("releases", first[tag], "tag"))[0]
            message = f"tag {tag!r} is already used at line {line}; give each release its own tag"
            yield matrix._Problem(("releases", i, "tag"), message)
        first.setdefault(tag, i)


def _missing_lists(path: Path, tree: Any) -> Iterator[matrix._Problem]:
    named = [(i, item["shopping_list"]) for i, item in _items(tree)]
    named = [(i, name) for i, name in named if isinstance(name, str)]
    folders = {(path.parent / name).parent for _, name in named}
    known = sorted(
        {p.relative_to(path.parent).as_posix() for f in folders for p in f.glob("*.list")}
    )
    for i, name in named:
        if (path.parent / name).is_file():
            continue
        hint = f", or name one of: {', '.join(known)}" if known else ""
        message = (
            f"shopping list {name!r} does not exist ({(path.parent / name).resolve()}); "
            f"create it (one package per line){hint}"
        )
        yield matrix._Problem(("releases", i, "shopping_list"), message)


def _default_branch_problems(tree: Any) -> Iterator[matrix._Problem]:
    default = tree.get("default_branch") if isinstance(tree, dict) else None
    named = {item.get("branch") for _, item in _items(tree)}
    branches = sorted(b for b in named if isinstance(b, str) and re.match(NAME, b))
    if isinstance(default, str) and branches and default not in branches:
        message = f"no release is on branch {default!r}; expected one of: {', '.join(branches)}"
        yield matrix._Problem(("default_branch",), message)


def _list_problems(path: Path, tree: Any) -> list[str]:
    """Syntax of the shopping lists (names and versions; whether the index has them is the
    solver's question): `LIST:LINE: ...`, with the release that names the list."""
    messages = []
    for i, item in _items(tree):
        name = item.get("shopping_list")
        if not isinstance(name, str) or not (path.parent / name).is_file():
            continue
        line = matrix._position(tree, ("releases", i, "shopping_list"))[0]
        for problem in shopping_list_problems(path.parent / name):
            messages.append(f"{problem} (the shopping list of {path}:{line})")
    return messages


def shopping_list_problems(path: Path) -> list[str]:
    """`FILE:LINE: ...` for each line that is not `name` or `name=version`."""
    problems = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        name, equals, version = (part.strip() for part in text.partition("="))
        if not solver.NAME.match(name):
            problems.append(
                f"{path}:{number}: {name!r} is not a package name; expected two or more "
                "lower-case letters, digits and + - . (one package per line, name or name=version)"
            )
        elif equals and (why := index.version_problem(version)):
            problems.append(f"{path}:{number}: package {name}: {why}; {index.VERSION_EXPECTED}")
    return problems


def _file_messages(path: Path, tree: Any, problems: list[matrix._Problem]) -> list[str]:
    """One line per problem, in file order: `FILE:LINE:COLUMN: KEY.PATH: what; the fix`."""

    def where(problem: matrix._Problem) -> tuple[int, int]:
        return matrix._position(tree, problem.loc, problem.at_key)

    return [
        f"{path}:{line}:{column}: {_key_path(tree, problem.loc)}: {problem.message}"
        for problem in sorted(problems, key=where)
        for line, column in [where(problem)]
    ]


def _key_path(tree: Any, loc: matrix.Loc) -> str:
    """`releases[2] (tag '1.2').overlay./etc/motd` for ("releases", 2, "overlay", "/etc/motd")."""
    text, node = "", tree
    for part in loc:
        if isinstance(node, list) and isinstance(part, int):
            node = node[part] if part < len(node) else None
            tag = node.get("tag") if isinstance(node, dict) else None
            text += f"[{part}]" + (f" (tag {tag!r})" if isinstance(tag, str) else "")
        else:
            node = node.get(part) if isinstance(node, dict) else None
            text += f".{part}" if text else str(part)
    return text or "(top level)"


# --------------------------------------------------------------------------- the lab's files


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
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
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
                    subprocess.run([APT_HELPER, "cat-file", str(path)], stdout=out, check=True)

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
    wanted: list[solver.Wanted]
    packages: list[Package]
    info: dict[str, Any]


def solve_list(
    shopping_list: Path,
    lists: AptLists,
    store: ArtifactStore,
    extra: Sequence[solver.Wanted] = (),
) -> Solved:
    """The closed list of ``shopping_list`` (plus ``extra``) against the snapshot's indexes."""
    started = time.perf_counter()
    repository = index.load_cached(list(lists.packages), store)
    try:
        wanted = solver.read_shopping_list(shopping_list, repository)
    except solver.ShoppingListError as error:
        raise RootfsError(f"shopping list against the live apt lists:\n{error}") from None
    listed = {w.name for w in wanted}
    for item in extra:
        if not item.candidates(repository):
            raise RootfsError(f"{item} is not in the apt lists ({lists.lists}); apt-get update?")
    wanted += [item for item in extra if item.name not in listed]
    model = solver.build_model(repository, wanted)
    solution = solver.solve(model, "highs")
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
    wanted: Sequence[solver.Wanted],
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
        run = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
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
    query = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
         "-f", "${Package} ${Version} ${Architecture} ${db:Status-Abbrev}\n"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [tuple(line.split()[:4]) for line in query.stdout.splitlines()]  # type: ignore[misc]


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


def chroot(root: Path, *command: str, epoch: int | None = None) -> str:
    env = os.environ | ({"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else {})
    run = subprocess.run(["chroot", str(root), *command], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RootfsError(f"chroot {root} {' '.join(command)}: {run.stderr.strip()}")
    return run.stdout


def customise(root: Path, release: Release, closed: Path, store: ArtifactStore, epoch: int) -> None:
    """The lab's files, the release's overlay, the identity files, and the record."""
    install_os_files(root)
    install_file(root, "/etc/hostname", b"ucvm\n")
    for path, content in sorted(release.overlay.items()):
        install_file(root, path, content.encode())
    reset_identity(root)
    remove_ssh_host_keys(root)
    chroot(root, "passwd", "--lock", "root", epoch=epoch)
    present = [u for u in UNITS_ENABLED if (root / "usr/lib/systemd/system" / u).exists()]
    if not (root / "etc/ssh/sshd_config").exists():  # a release without openssh-server
        present.remove("ucvm-ssh-hostkeys.service")
    chroot(root, "systemctl", "enable", *present, epoch=epoch)
    chroot(root, "systemctl", "mask", *UNITS_MASKED, epoch=epoch)
    write_record(root, release, closed, epoch)


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
    subprocess.run(
        ["mksquashfs", str(root), str(image), "-noappend", "-quiet", "-no-progress",
         *(compression or SQUASHFS_COMPRESSION), "-mkfs-time", str(epoch)],
        check=True, capture_output=True,
    )  # fmt: skip


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


@dataclass(frozen=True)
class ConventionalImage:
    qcow2: Path
    kernel: Path
    initrd: Path
    cmdline: str
    tag: str
    root: Path  # the unpacked tree the disk was made from
    closed_list: Path
    record: dict[str, str] = field(hash=False)
    info: dict[str, Any] = field(hash=False)


def tool_versions(*packages: str) -> dict[str, str]:
    query = subprocess.run(["dpkg-query", "-W", *packages], capture_output=True, text=True)
    return dict(line.split("\t", 1) for line in query.stdout.splitlines() if "\t" in line)


def release_inputs(release: Release, lists: AptLists, epoch: int) -> dict[str, Any]:
    """Everything a release's root depends on; its hash names the artifact."""
    return {
        "rootfs": ROOTFS_VERSION,
        "code": file_digest(Path(__file__)),
        "tag": release.tag,
        "branch": release.branch,
        "shopping_list": [release.shopping_list.name, file_digest(release.shopping_list)],
        "overlay": release.overlay,
        "os_files": tree_digest(OS_FILES),
        "apt_lists": lists.digests,
        "source_date_epoch": epoch,
        "tools": tool_versions("mmdebstrap", "squashfs-tools"),
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

    directory = store.get("os-root", release_inputs(release, lists, epoch), build)
    return release_artifact(directory)


def release_artifact(directory: Path) -> ReleaseArtifact:
    info = json.loads((directory / "build.json").read_text())
    return ReleaseArtifact(
        tag=info["tag"],
        branch=info["branch"],
        squashfs=directory / "image.squashfs",
        closed_list=directory / "closed-list.txt",
        record=read_record(directory / "root"),
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
    with _timed(timings, "solve"):
        solved = solve_list(release.shopping_list, lists, store)
        closed = write_closed_list(solved, lists, release.shopping_list, work)
    entries = closed_list.entries(solved.packages)
    with _timed(timings, "mmdebstrap"):
        fetched = install(entries, lists, work / "root", store, work / "build.log", epoch=epoch)
    with _timed(timings, "customise"):
        check_installed(entries, work / "root")
        customise(work / "root", release, closed, store, epoch)
        clamp_mtimes(work / "root", epoch)
    info = build_info(release, solved, fetched, work / "root", epoch)
    if squashfs:
        with _timed(timings, "squashfs"):
            make_squashfs(work / "root", work / "image.squashfs", epoch)
        info["squashfs_bytes"] = (work / "image.squashfs").stat().st_size
        info["squashfs_sha256"] = file_digest(work / "image.squashfs")
    info["timings_s"] = timings
    (work / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """``with _timed(timings, "step"):`` records the step's wall-clock seconds."""
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


# --------------------------------------------------------------------------- the baseline


def conventional_image(release: Release, store: ArtifactStore | None = None) -> ConventionalImage:
    """The same release as a conventional full disk: + Debian's kernel (the package the boot
    loader uses) + initramfs-tools (see CONVENTIONAL_EXTRAS), an ext4 file system in a
    compressed qcow2, and the kernel and Debian's own initrd for a direct kernel boot."""
    store = store or ArtifactStore()
    lists = apt_lists(store)
    epoch = source_date_epoch(lists)
    package, version = kernel_pkg.resolve_package()
    kernel_release = package.removeprefix("linux-image-")
    extra = (solver.Wanted(package, version), *map(solver.Wanted, CONVENTIONAL_EXTRAS))
    inputs = {
        **release_inputs(release, lists, epoch),
        "image": "conventional",
        "kernel": [package, version],
        "cmdline": CONVENTIONAL_CMDLINE,
        "image_tools": tool_versions("e2fsprogs", "qemu-utils"),
    }

    def build(work: Path) -> None:
        build_conventional_into(work, release, lists, store, epoch, extra, kernel_release)

    return conventional_artifact(store.get("os-conventional", inputs, build))


def conventional_artifact(directory: Path) -> ConventionalImage:
    info = json.loads((directory / "build.json").read_text())
    return ConventionalImage(
        qcow2=directory / "disk.qcow2",
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        cmdline=info["cmdline"],
        tag=info["tag"],
        root=directory / "root",
        closed_list=directory / "closed-list.txt",
        record=read_record(directory / "root"),
        info=info,
    )


def build_conventional_into(
    work: Path,
    release: Release,
    lists: AptLists,
    store: ArtifactStore,
    epoch: int,
    extra: Sequence[solver.Wanted],
    kernel_release: str,
) -> None:
    timings: dict[str, float] = {}
    with _timed(timings, "solve"):
        solved = solve_list(release.shopping_list, lists, store, extra)
        closed = write_closed_list(solved, lists, release.shopping_list, work)
    entries = closed_list.entries(solved.packages)
    # Debian's initrd, made inside the root once everything is configured (mmdebstrap has
    # /proc, /sys and /dev mounted for its hooks)
    initramfs = (
        f'rm -f "$1/boot/initrd.img-{kernel_release}" && '
        f'chroot "$1" update-initramfs -c -k {kernel_release}'
    )
    root = work / "root"
    with _timed(timings, "mmdebstrap"):
        fetched = install(entries, lists, root, store, work / "build.log", epoch=epoch,
                          customize=[initramfs])  # fmt: skip
    with _timed(timings, "customise"):
        check_installed(entries, root)
        customise(root, release, closed, store, epoch)
        clamp_mtimes(root, epoch)
    with _timed(timings, "disk"):
        boot_files(root, kernel_release, work)
        disk = make_disk(root, work)
    info = build_info(release, solved, fetched, root, epoch)
    info.update(disk, cmdline=CONVENTIONAL_CMDLINE, kernel_release=kernel_release,
                timings_s=timings)  # fmt: skip
    (work / "build.json").write_text(json.dumps(info, indent=2) + "\n")


def boot_files(root: Path, kernel_release: str, out: Path) -> None:
    for source, name in ((f"vmlinuz-{kernel_release}", "vmlinuz"),
                         (f"initrd.img-{kernel_release}", "initrd.img")):  # fmt: skip
        if not (root / "boot" / source).is_file():
            raise RootfsError(f"{root}/boot/{source} is missing after the install")
        shutil.copyfile(root / "boot" / source, out / name)
        (out / name).chmod(0o644)  # QEMU runs as libvirt-qemu


MIB = 1 << 20


def make_disk(root: Path, out: Path) -> dict[str, int]:
    """ext4 of the root (its content + a fifth + 128 MiB), as a compressed qcow2."""
    used = disk_usage(root)
    size = (used + used // 5 + 128 * MIB + MIB - 1) // MIB * MIB
    raw = out / "disk.raw"
    with raw.open("wb") as stream:
        stream.truncate(size)
    inodes = sum(len(dirs) + len(files) for _, dirs, files in os.walk(root)) * 2 + 8192
    _run("mkfs.ext4", "-q", "-F", "-L", "ucvm-root", "-N", str(inodes), "-d", str(root), str(raw))
    _run("qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(out / "disk.qcow2"))
    raw.unlink()
    return {"disk_bytes": size, "qcow2_bytes": (out / "disk.qcow2").stat().st_size}


def _run(*command: str) -> None:
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise RootfsError(f"{' '.join(command)} failed: {run.stderr.strip()[-1000:]}")
