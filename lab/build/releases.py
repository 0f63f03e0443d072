"""releases.yaml: the OS releases the nightly publishes, read and validated once, at the edge.

Each release names a tag, a branch, a shopping list, a small configuration overlay (files
written into the root) and the boot loader version it wants (lab.build.bootloader's
LOADER_VERSIONS; the repository lists it on the release's snapshot line). The file is read
through lab.config, the lab's one YAML loader, so a problem is reported as matrix.yaml's are,
every one at once: `FILE:LINE:COLUMN: KEY.PATH: what is wrong; what to do`. Beyond the schema
it checks what pydantic cannot see one item at a time: a tag used twice, a shopping list that
does not exist or has a malformed line, a default branch no release is on, and an overlay path
that the lab writes itself (lab.build.os_files). What is built from a release is
lab.build.rootfs's.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from lab import config
from lab.build import os_files
from lab.build.bootloader import IMAGE_LOADER, LOADER_VERSIONS
from lab.config import Document, Name, Problem, Schema
from lab.packages import debian, solve

RELEASES_FILE = Path(__file__).resolve().parents[2] / "releases.yaml"
NAME = re.compile(config.NAME_PATTERN)  # a tag or a branch (docs/os-on-demand.md)


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


class _ReleaseSchema(Schema):
    tag: Name
    branch: Name
    shopping_list: str
    description: str = ""
    overlay: dict[Annotated[str, AfterValidator(_check_overlay_path)], str] = Field(
        default_factory=dict
    )
    loader: Annotated[str, AfterValidator(_check_loader)] = IMAGE_LOADER


class _ReleasesSchema(Schema):
    default_branch: Name
    releases: Annotated[list[_ReleaseSchema], Field(min_length=1)]


# --------------------------------------------------------------------------- loading


def load_releases(path: Path = RELEASES_FILE) -> list[Release]:
    """The releases of ``path``, in publish order; ReleaseError lists every problem at once."""
    return list(load_release_set(path).releases)


def load_release_set(path: Path = RELEASES_FILE) -> ReleaseSet:
    rules = (_duplicate_tags, _missing_lists, _default_branch_problems, _list_problems)
    schema = config.load(path, _ReleasesSchema, error=ReleaseError, rules=rules, item_key="tag")
    releases = tuple(
        Release(
            tag=item.tag,
            branch=item.branch,
            shopping_list=(path.parent / item.shopping_list).resolve(),
            overlay=dict(item.overlay),
            description=item.description,
            loader=item.loader,
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
