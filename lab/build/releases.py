"""releases.yaml: the OS releases the nightly publishes, read and validated once, at the edge.

Each release names a tag, a branch, a shopping list, a small configuration overlay (files
written into the root, mode 0644 or the one a value names), the boot loader version it wants
(lab.build.bootloader's LOADER_VERSIONS; the repository lists it on the release's snapshot line)
and, optionally, the rebase suite's fixture .debs it installs (lab.build.fixture_debs'
FIXTURE_DEBS). The file is read through lab.config, the lab's one YAML loader, so a problem is
reported as matrix.yaml's are, every one at once: `FILE:LINE:COLUMN: KEY.PATH: what is wrong;
what to do`. Beyond the schema it checks what pydantic cannot see one item at a time: a tag used
twice, a shopping list that does not exist or has a malformed line, a default branch no release
is on, an overlay path that the lab writes itself (lab.build.os_files), and a fixture package
named twice. What is built from a release is lab.build.rootfs's.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PlainValidator

from lab import config
from lab.build import fixture_debs, os_files
from lab.build.bootloader import IMAGE_LOADER, LOADER_VERSIONS
from lab.config import Document, Name, Problem, Schema
from lab.packages import debian, solve

RELEASES_FILE = Path(__file__).resolve().parents[2] / "releases.yaml"
NAME = re.compile(config.NAME_PATTERN)  # a tag or a branch (docs/os-on-demand.md)
OVERLAY_MODE = 0o644  # an overlay file's mode unless its value names one
OVERLAY_MODE_TEXT = re.compile(r"^0?[0-7]{3}$")  # permission bits only: no setuid, no sticky
OVERLAY_FILE_KEYS = ("content", "mode")
OVERLAY_FILE_FORM = '{content: TEXT, mode: "0755"}'


class ReleaseError(config.ConfigError):
    """Problems in releases.yaml (or a list it names); `str(error)` has one line per problem.
    Reported as matrix.yaml's are, by the same loader (lab.config)."""


@dataclass(frozen=True)
class Release:
    tag: str
    branch: str
    shopping_list: Path  # absolute
    overlay: dict[str, str] = field(hash=False)  # absolute path in the root -> content
    description: str = ""
    loader: str = IMAGE_LOADER  # the boot loader version the release wants
    fixture_debs: tuple[str, ...] = ()  # `name=version` of lab.build.fixture_debs, installed
    # the overlay files whose value named a mode other than OVERLAY_MODE: path -> mode bits
    overlay_modes: dict[str, int] = field(default_factory=dict, hash=False)

    def overlay_mode(self, path: str) -> int:
        """The mode the overlay file at ``path`` is installed with (root owns it)."""
        return self.overlay_modes.get(path, OVERLAY_MODE)


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


# --------------------------------------------------------------------------- the schema


def _check_overlay_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"expected an absolute path in the root, e.g. /etc/motd; found {path!r}")
    if posixpath.normpath(path) != path or path == "/":
        raise ValueError(f"expected a plain file path (no //, ., .. or trailing /); found {path!r}")
    if any(path == r or path.startswith(r + "/") for r in os_files.written_by_the_lab()):
        raise ValueError(
            f"{path} is written by the lab itself (lab/build/os-files/ or the release record); "
            "choose another path, e.g. a drop-in under /etc/<program>.d/"
        )
    return path


def _check_loader(version: str) -> str:
    if version not in LOADER_VERSIONS:
        raise ValueError(
            f"loader {version!r} is not a boot loader version the lab builds; expected one of: "
            f"{', '.join(LOADER_VERSIONS)} (LOADER_VERSIONS in lab/build/bootloader.py), or "
            f"leave the key out for {IMAGE_LOADER}"
        )
    return version


def _check_fixture_deb(key: str) -> str:
    if key not in fixture_debs.FIXTURE_DEBS:
        name = key.partition("=")[0]
        same = [k for k in fixture_debs.FIXTURE_DEBS if k.partition("=")[0] == name]
        expected = ", ".join(same or fixture_debs.FIXTURE_DEBS)
        raise ValueError(
            f"{key!r} is not a fixture .deb the lab builds; expected name=version, one of: "
            f"{expected} (FIXTURE_DEBS in lab/build/fixture_debs.py)"
        )
    return key


@dataclass(frozen=True)
class OverlayFile:
    """One overlay value, settled: the file's text and its permission bits."""

    content: str
    mode: int = OVERLAY_MODE


def _overlay_file(value: Any) -> OverlayFile:
    """An overlay value: the file's content as a string, or {content: TEXT, mode: "0755"}."""
    if isinstance(value, str):
        return OverlayFile(str(value))
    if not isinstance(value, dict):
        raise ValueError(
            f"expected a string (the file's content) or a mapping {OVERLAY_FILE_FORM}; "
            f"found {config.describe(value)}"
        )
    unknown = [key for key in value if key not in OVERLAY_FILE_KEYS]
    if unknown:
        raise ValueError(
            f"unknown key {unknown[0]!r}{config.did_you_mean(unknown[0], OVERLAY_FILE_KEYS)} in "
            f"the file's mapping; allowed keys: {', '.join(OVERLAY_FILE_KEYS)}"
        )
    if "content" not in value:
        raise ValueError(f"content: required key is missing; write {OVERLAY_FILE_FORM}")
    content, mode = value["content"], value.get("mode", f"{OVERLAY_MODE:04o}")
    if not isinstance(content, str):
        raise ValueError(f"content: expected a string; found {config.describe(content)}")
    if not isinstance(mode, str) or not OVERLAY_MODE_TEXT.match(mode):
        quote = isinstance(mode, int) and not isinstance(mode, bool)
        raise ValueError(
            "mode: expected the permission bits as three octal digits, in quotes, optionally "
            f'after a 0: e.g. "0755"; found {config.describe(mode)}'
            + (" (put it in quotes: YAML reads 0755 as a number)" if quote else "")
        )
    return OverlayFile(str(content), int(mode, 8))


class _ReleaseSchema(Schema):
    tag: Name
    branch: Name
    shopping_list: str
    description: str = ""
    overlay: dict[
        Annotated[str, AfterValidator(_check_overlay_path)],
        Annotated[OverlayFile, PlainValidator(_overlay_file)],
    ] = Field(default_factory=dict)
    loader: Annotated[str, AfterValidator(_check_loader)] = IMAGE_LOADER
    fixture_debs: list[Annotated[str, AfterValidator(_check_fixture_deb)]] = Field(
        default_factory=list
    )


class _ReleasesSchema(Schema):
    default_branch: Name
    releases: Annotated[list[_ReleaseSchema], Field(min_length=1)]


# --------------------------------------------------------------------------- loading


def load_releases(path: Path = RELEASES_FILE) -> list[Release]:
    """The releases of ``path``, in publish order; ReleaseError lists every problem at once."""
    return list(load_release_set(path).releases)


def load_release_set(path: Path = RELEASES_FILE) -> ReleaseSet:
    rules = (_duplicate_tags, _duplicate_fixtures, _missing_lists, _default_branch_problems,
             _list_problems)  # fmt: skip
    schema = config.load(path, _ReleasesSchema, error=ReleaseError, rules=rules, item_key="tag")
    releases = tuple(
        Release(
            tag=item.tag,
            branch=item.branch,
            shopping_list=(path.parent / item.shopping_list).resolve(),
            overlay={path: file.content for path, file in item.overlay.items()},
            description=item.description,
            loader=item.loader,
            fixture_debs=tuple(item.fixture_debs),
            overlay_modes={
                path: file.mode for path, file in item.overlay.items() if file.mode != OVERLAY_MODE
            },
        )
        for item in schema.releases
    )
    return ReleaseSet(path, schema.default_branch, releases)


# --------------------------------------------------------------------------- the rules


def _items(tree: Any) -> list[tuple[int, dict[str, Any]]]:
    return [
        (i, item)
        for i, item in enumerate(config.list_at(tree, "releases"))
        if isinstance(item, dict)
    ]


def _duplicate_tags(document: Document) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for i, item in _items(document.tree):
        tag = item.get("tag")
        if not isinstance(tag, str):
            continue
        if tag in first:
            line = document.line(("releases", first[tag], "tag"))
            message = f"tag {tag!r} is already used at line {line}; give each release its own tag"
            yield Problem(("releases", i, "tag"), message)
        first.setdefault(tag, i)


def _duplicate_fixtures(document: Document) -> Iterator[Problem]:
    """A release installs one version of each fixture package."""
    for i, item in _items(document.tree):
        keys = item.get("fixture_debs")
        first: dict[str, str] = {}
        for j, key in enumerate(keys if isinstance(keys, list) else []):
            name = key.partition("=")[0] if isinstance(key, str) else None
            if name is None:
                continue
            if name in first:
                message = (
                    f"{key!r}: the release already installs {first[name]!r}; "
                    f"name one version of {name}"
                )
                yield Problem(("releases", i, "fixture_debs", j), message)
            first.setdefault(name, key)


def _missing_lists(document: Document) -> Iterator[Problem]:
    folder = document.path.parent
    listed = [(i, item.get("shopping_list")) for i, item in _items(document.tree)]
    named: list[tuple[int, str]] = [(i, name) for i, name in listed if isinstance(name, str)]
    folders = {(folder / name).parent for _, name in named}
    known = sorted({p.relative_to(folder).as_posix() for f in folders for p in f.glob("*.list")})
    for i, name in named:
        if (folder / name).is_file():
            continue
        hint = f", or name one of: {', '.join(known)}" if known else ""
        message = (
            f"shopping list {name!r} does not exist ({(folder / name).resolve()}); "
            f"create it (one package per line){hint}"
        )
        yield Problem(("releases", i, "shopping_list"), message)


def _default_branch_problems(document: Document) -> Iterator[Problem]:
    tree = document.tree
    default = tree.get("default_branch") if isinstance(tree, dict) else None
    named = {item.get("branch") for _, item in _items(tree)}
    branches = sorted(b for b in named if isinstance(b, str) and re.match(NAME, b))
    if isinstance(default, str) and branches and default not in branches:
        message = f"no release is on branch {default!r}; expected one of: {', '.join(branches)}"
        yield Problem(("default_branch",), message)


def _list_problems(document: Document) -> Iterator[str]:
    """Syntax of the shopping lists (names and versions; whether the index has them is the
    solver's question): `LIST:LINE: ...`, with the release that names the list."""
    path = document.path
    for i, item in _items(document.tree):
        name = item.get("shopping_list")
        if not isinstance(name, str) or not (path.parent / name).is_file():
            continue
        line = document.line(("releases", i, "shopping_list"))
        for problem in shopping_list_problems(path.parent / name):
            yield f"{problem} (the shopping list of {path}:{line})"


def shopping_list_problems(path: Path) -> list[str]:
    """`FILE:LINE: ...` for each line that is not `name` or `name=version`."""
    problems = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        name, equals, version = (part.strip() for part in text.partition("="))
        if not solve.NAME.match(name):
            problems.append(
                f"{path}:{number}: {name!r} is not a package name; expected two or more "
                "lower-case letters, digits and + - . (one package per line, name or name=version)"
            )
        elif equals and (why := debian.version_problem(version)):
            problems.append(f"{path}:{number}: package {name}: {why}; {debian.VERSION_EXPECTED}")
    return problems
