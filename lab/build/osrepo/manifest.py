"""The signed manifest's format (docs/os-on-demand.md): parse, render, sign, verify.

A manifest is text: five header lines, one ``snapshot`` line per tag, one ``loader`` line per
boot loader version, one ``branch`` line per branch head, and last the Ed25519 signature of
every byte before it. ``Manifest.parse`` refuses, with the line and what is wrong, anything
but that; with a public key it also refuses a manifest that key did not sign.
``Manifest.resolve`` turns a version the guest asks for (newest, previous, a branch, a tag)
into its snapshot.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from lab.build.osrepo.keys import PublicKey, RepoError, SigningKey
from lab.messages import clip

FORMAT = "ucvm-manifest 1"
MANIFEST = "manifest"
SNAPSHOTS = "snapshots"
LOADERS = "loaders"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX_CHARS = 64  # a tag or branch is a manifest field: the guest reads at most 1 MiB of it
NAME_RULE = f"a name is [A-Za-z0-9][A-Za-z0-9._-]*, at most {NAME_MAX_CHARS} characters"
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SHA_RE = re.compile(r"[0-9a-f]{64}")
KEYID_RE = re.compile(r"[0-9a-f]{16}")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
T = TypeVar("T")


def utc_timestamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).astimezone(UTC).strftime(TIME_FORMAT)


def check_name(kind: str, name: str) -> str:
    if len(name) > NAME_MAX_CHARS or not NAME_RE.fullmatch(name):
        raise RepoError(f"{kind} {clip(name)}: {NAME_RULE}")
    return name


def check_timestamp(value: str) -> str:
    try:
        if TIMESTAMP_RE.fullmatch(value):
            datetime.strptime(value, TIME_FORMAT)
            return value
    except ValueError:
        pass
    raise RepoError(f"timestamp {clip(value)}: expected UTC YYYY-MM-DDTHH:MM:SSZ")


@dataclass(frozen=True)
class Snapshot:
    tag: str
    branch: str
    timestamp: str
    image_sha256: str
    image_bytes: int
    block_bytes: int
    blocks_sha256: str
    loader: str | None = None  # the boot loader version the snapshot wants (a loader line)

    FIELDS = (
        "snapshot TAG BRANCH TIMESTAMP IMAGE_SHA256 IMAGE_BYTES BLOCK_BYTES BLOCKS_SHA256 "
        "[LOADER_VERSION]"
    )

    @property
    def image_name(self) -> str:
        """The image's path relative to REPO (and to the server's URL)."""
        return f"{SNAPSHOTS}/{self.image_sha256}.img"

    @property
    def blocks_name(self) -> str:
        return f"{SNAPSHOTS}/{self.image_sha256}.blocks"

    @property
    def block_count(self) -> int:
        return -(-self.image_bytes // self.block_bytes)

    def line(self) -> str:
        loader = f" {self.loader}" if self.loader is not None else ""
        return (
            f"snapshot {self.tag} {self.branch} {self.timestamp} {self.image_sha256} "
            f"{self.image_bytes} {self.block_bytes} {self.blocks_sha256}{loader}"
        )

    @classmethod
    def from_fields(cls, fields: list[str]) -> Snapshot:
        """From a line's 7 or 8 fields after ``snapshot``; RepoError names the bad field."""
        tag, branch, timestamp, image_sha, image_bytes, block_bytes, blocks_sha = fields[:7]
        loader = fields[7] if len(fields) == 8 else None
        return cls(
            check_name("tag", tag),
            check_name("branch", branch),
            check_timestamp(timestamp),
            check_sha("IMAGE_SHA256", image_sha),
            check_count("IMAGE_BYTES", image_bytes),
            check_count("BLOCK_BYTES", block_bytes),
            check_sha("BLOCKS_SHA256", blocks_sha),
            None if loader is None else check_name("LOADER_VERSION", loader),
        )


@dataclass(frozen=True)
class Loader:
    """A boot loader version: a kernel and an initramfs, served content-addressed as
    ``loaders/KERNEL_SHA256.kernel`` and ``loaders/INITRD_SHA256.initrd``."""

    version: str
    timestamp: str
    kernel_sha256: str
    kernel_bytes: int
    initrd_sha256: str
    initrd_bytes: int

    FIELDS = "loader VERSION TIMESTAMP KERNEL_SHA256 KERNEL_BYTES INITRD_SHA256 INITRD_BYTES"

    @property
    def kernel_name(self) -> str:
        """The kernel's path relative to REPO (and to the server's URL)."""
        return f"{LOADERS}/{self.kernel_sha256}.kernel"

    @property
    def initrd_name(self) -> str:
        return f"{LOADERS}/{self.initrd_sha256}.initrd"

    def files(self) -> tuple[tuple[str, str, int], ...]:
        """(path relative to REPO, sha256, bytes) of the kernel and the initramfs."""
        return (
            (self.kernel_name, self.kernel_sha256, self.kernel_bytes),
            (self.initrd_name, self.initrd_sha256, self.initrd_bytes),
        )

    def line(self) -> str:
        return (
            f"loader {self.version} {self.timestamp} {self.kernel_sha256} {self.kernel_bytes} "
            f"{self.initrd_sha256} {self.initrd_bytes}"
        )

    @classmethod
    def from_fields(cls, fields: list[str]) -> Loader:
        """From a line's 6 fields after ``loader``; RepoError names the bad field."""
        version, timestamp, kernel_sha, kernel_bytes, initrd_sha, initrd_bytes = fields
        return cls(
            check_name("loader version", version),
            check_timestamp(timestamp),
            check_sha("KERNEL_SHA256", kernel_sha),
            check_count("KERNEL_BYTES", kernel_bytes),
            check_sha("INITRD_SHA256", initrd_sha),
            check_count("INITRD_BYTES", initrd_bytes),
        )


FORCED = "forced"
"""A promotion's evidence when ``ucvm-lab release promote --force`` skipped the verdict."""


@dataclass(frozen=True)
class Promotion:
    """A branch moved to a tag by ``ucvm-lab release promote``, and on what evidence: the
    sha256 of the gate verdict that passed for exactly that candidate, or ``forced``. The
    guest's manifest reader skips the record (it reads snapshot, loader, branch)."""

    branch: str
    tag: str
    timestamp: str
    evidence: str  # a verdict file's sha256, or FORCED

    def line(self) -> str:
        return f"promotion {self.branch} {self.tag} {self.timestamp} {self.evidence}"

    @classmethod
    def from_fields(cls, fields: list[str]) -> Promotion:
        branch, tag, timestamp, evidence = fields
        return cls(
            check_name("branch", branch),
            check_name("tag", tag),
            check_timestamp(timestamp),
            evidence if evidence == FORCED else check_sha("VERDICT_SHA256", evidence),
        )

    @property
    def forced(self) -> bool:
        return self.evidence == FORCED


def check_sha(what: str, value: str) -> str:
    if not SHA_RE.fullmatch(value):
        raise RepoError(f"{what} {value!r}: expected 64 lowercase hex digits")
    return value


def check_count(what: str, value: str, minimum: int = 1) -> int:
    if not value.isdigit() or int(value) < minimum or (len(value) > 1 and value[0] == "0"):
        raise RepoError(f"{what} {value!r}: expected an integer >= {minimum}")
    return int(value)


def signature_line(key: SigningKey, body: bytes) -> bytes:
    """The manifest's last line: ``key``'s Ed25519 signature of every byte before it."""
    signature = base64.b64encode(key.sign(body)).decode()
    return f"signature ed25519 {key.keyid} {signature}\n".encode()


@dataclass(frozen=True)
class SignatureLine:
    keyid: str
    signature: bytes
    line_no: int


HEADER = (
    ("ucvm-manifest", "ucvm-manifest 1"),
    ("repository", "repository NAME"),
    ("serial", "serial N"),
    ("published", "published YYYY-MM-DDTHH:MM:SSZ"),
    ("default-branch", "default-branch NAME"),
)


@dataclass
class Manifest:
    repository: str
    serial: int
    published: str
    default_branch: str
    snapshots: list[Snapshot] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> head tag
    loaders: list[Loader] = field(default_factory=list)  # in publish order
    promotions: list[Promotion] = field(default_factory=list)  # the history, oldest first

    def render(self) -> str:
        """The manifest's text without its signature line."""
        lines = [
            FORMAT,
            f"repository {self.repository}",
            f"serial {self.serial}",
            f"published {self.published}",
            f"default-branch {self.default_branch}",
            *(s.line() for s in self.snapshots),
            *(loader.line() for loader in self.loaders),
            *(f"branch {name} {tag}" for name, tag in self.branches.items()),
            *(promotion.line() for promotion in self.promotions),
        ]
        return "\n".join(lines) + "\n"

    def sign(self, key: SigningKey) -> bytes:
        body = self.render().encode()
        return body + signature_line(key, body)

    @classmethod
    def parse(
        cls, data: bytes, public_key: PublicKey | None = None, source: str = "manifest"
    ) -> Manifest:
        """Parse a manifest; with ``public_key``, refuse it unless that key signed it."""
        body, signature = split_signature(data, source)
        if public_key is not None:
            check_signature(body, signature, public_key, source)
        return parse_body(body, source)

    # --- queries

    def tags(self) -> list[str]:
        return [s.tag for s in self.snapshots]

    def snapshot(self, tag: str) -> Snapshot | None:
        return next((s for s in self.snapshots if s.tag == tag), None)

    def loader(self, version: str) -> Loader | None:
        return next((x for x in self.loaders if x.version == version), None)

    def loader_versions(self) -> list[str]:
        return [x.version for x in self.loaders]

    def promotions_of(self, tag: str, branch: str | None = None) -> list[Promotion]:
        return [p for p in self.promotions if p.tag == tag and branch in (None, p.branch)]

    def heads(self) -> dict[str, list[str]]:
        """Tag -> the branches whose head it is."""
        heads: dict[str, list[str]] = {}
        for name, tag in self.branches.items():
            heads.setdefault(tag, []).append(name)
        return heads

    def resolve(self, version: str) -> Snapshot:
        """``newest`` (or ""), ``previous``, a branch name or a tag -> that snapshot."""
        if version in ("", "newest"):
            return self._head(self.default_branch, "newest")
        if version == "previous":
            return self._previous()
        if version in self.branches:
            return self._head(version, version)
        if snapshot := self.snapshot(version):
            return snapshot
        raise RepoError(f"unknown version {version!r}: ask for newest, previous, {self._choices()}")

    def _choices(self) -> str:
        branches = ", ".join(self.branches) or "none"
        tags = ", ".join(self.tags()) or "none"
        return f"a branch ({branches}) or a tag ({tags})"

    def _head(self, branch: str, asked: str) -> Snapshot:
        if branch not in self.branches:
            raise RepoError(
                f"{asked}: branch {branch!r} has no snapshot yet: publish to it, or ask for "
                f"{self._choices()}"
            )
        snapshot = self.snapshot(self.branches[branch])
        assert snapshot is not None  # parse() checks that every head is a tag
        return snapshot

    def _previous(self) -> Snapshot:
        head = self._head(self.default_branch, "previous")
        before = self.snapshots[: self.snapshots.index(head)]
        earlier = [s for s in before if s.branch == self.default_branch]
        if not earlier:
            raise RepoError(
                f"previous: nothing was published on branch {self.default_branch!r} before "
                f"its head {head.tag!r}; ask for {self._choices()}"
            )
        return earlier[-1]


def line_error(source: str, line_no: int, message: str) -> RepoError:
    return RepoError(f"{source} line {line_no}: {message}")


def split_signature(data: bytes, source: str) -> tuple[bytes, SignatureLine | None]:
    """The signed body and the signature of the last line, if that line is a signature."""
    if not data:
        raise RepoError(f"{source}: empty")
    if not data.endswith(b"\n"):
        raise RepoError(f"{source}: the last line has no line feed (truncated?)")
    start = data.rfind(b"\n", 0, len(data) - 1) + 1
    last = data[start:-1]
    if last.split(b" ")[0] != b"signature":
        return data, None
    line_no = data.count(b"\n", 0, start) + 1
    return data[:start], parse_signature_line(last, line_no, source)


def parse_signature_line(line: bytes, line_no: int, source: str) -> SignatureLine:
    expected = "expected 'signature ed25519 KEYID BASE64SIG' (64-byte Ed25519 signature)"
    fields = line.decode("ascii", "replace").split(" ")
    if len(fields) != 4 or fields[1] != "ed25519" or not KEYID_RE.fullmatch(fields[2]):
        raise line_error(source, line_no, f"{expected}, got {line[:120]!r}")
    try:
        signature = base64.b64decode(fields[3], validate=True)
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise line_error(source, line_no, f"{expected}: BASE64SIG is not 64 bytes in base64")
    return SignatureLine(fields[2], signature, line_no)


def check_signature(
    body: bytes, signature: SignatureLine | None, key: PublicKey, source: str
) -> None:
    if signature is None:
        raise RepoError(
            f"{source}: unsigned (no 'signature ed25519 KEYID BASE64SIG' last line): refused, "
            "and no write re-signs it; restore the signed manifest (a backup, or the server's "
            "copy), or make a new repository (ucvm-lab repo init --repo NEW) and publish the "
            "images again"
        )
    if signature.keyid != key.keyid:
        raise RepoError(
            f"{source}: manifest signature invalid: signed by key {signature.keyid}, expected "
            f"key {key.keyid}: set UCVM_REPO_KEY to the key that signs this repository"
        )
    if not key.verify(body, signature.signature):
        raise RepoError(
            f"{source}: manifest signature invalid: the manifest was changed after it was "
            f"signed by key {key.keyid}"
        )


def decode_body(body: bytes, source: str) -> list[str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        line_no = body.count(b"\n", 0, error.start) + 1
        raise line_error(source, line_no, "not UTF-8") from error
    lines = text.split("\n")[:-1]
    for line_no, line in enumerate(lines, 1):
        if "\r" in line:
            raise line_error(source, line_no, "CR found: a manifest has LF line endings")
    return lines


def parse_body(body: bytes, source: str) -> Manifest:
    lines = decode_body(body, source)
    if len(lines) < len(HEADER):
        raise RepoError(f"{source}: {len(lines)} lines, expected at least the 5 header lines")
    header = [parse_header(line, i, source) for i, line in enumerate(lines[: len(HEADER)], 1)]
    manifest = Manifest(
        repository=header[1],
        serial=check_line(source, 3, check_count, "serial", header[2], 0),
        published=check_line(source, 4, check_timestamp, header[3]),
        default_branch=header[4],
    )
    for line_no, line in enumerate(lines[len(HEADER) :], len(HEADER) + 1):
        parse_record(manifest, line, line_no, source)
    check_consistent(manifest, source)
    return manifest


def check_line(source: str, line_no: int, check: Callable[..., T], *args: object) -> T:
    """``check(*args)``, with a RepoError located at ``line_no``."""
    try:
        return check(*args)
    except RepoError as error:
        raise line_error(source, line_no, str(error)) from error


def parse_header(line: str, line_no: int, source: str) -> str:
    keyword, expected = HEADER[line_no - 1]
    fields = line.split(" ")
    if len(fields) != 2 or fields[0] != keyword or (line_no == 1 and line != FORMAT):
        raise line_error(source, line_no, f"expected '{expected}', got {line[:120]!r}")
    if keyword in ("repository", "default-branch"):
        check_line(source, line_no, check_name, keyword, fields[1])
    return fields[1]


def parse_record(manifest: Manifest, line: str, line_no: int, source: str) -> None:
    keyword, *fields = line.split(" ")
    if keyword == "snapshot":
        parse_snapshot(manifest, line, fields, line_no, source)
    elif keyword == "loader":
        parse_loader(manifest, line, fields, line_no, source)
    elif keyword == "branch":
        if len(fields) != 2:
            raise line_error(source, line_no, f"expected 'branch NAME HEAD_TAG', got {line!r}")
        name = check_line(source, line_no, check_name, "branch", fields[0])
        tag = check_line(source, line_no, check_name, "tag", fields[1])
        if name in manifest.branches:
            raise line_error(source, line_no, f"branch {name!r} is listed twice")
        if not manifest.snapshot(tag):
            raise line_error(source, line_no, f"branch {name!r}: head {tag!r} is not a tag")
        manifest.branches[name] = tag
    elif keyword == "promotion":
        if len(fields) != 4:
            raise line_error(
                source, line_no, f"expected 'promotion BRANCH TAG TIMESTAMP EVIDENCE', got {line!r}"
            )
        promotion = check_line(source, line_no, Promotion.from_fields, fields)
        if not manifest.snapshot(promotion.tag):
            raise line_error(source, line_no, f"promotion of {promotion.tag!r}: not a tag")
        manifest.promotions.append(promotion)
    elif keyword == "signature":
        raise line_error(source, line_no, "the signature line must be the last line")
    else:
        raise line_error(
            source,
            line_no,
            f"unknown record {keyword!r}: expected snapshot, loader, branch, promotion, signature",
        )


def parse_snapshot(
    manifest: Manifest, line: str, fields: list[str], line_no: int, source: str
) -> None:
    if manifest.branches or manifest.loaders:
        later = "loader" if manifest.loaders else "branch"
        raise line_error(source, line_no, f"snapshot lines come before the {later} lines")
    if len(fields) not in (7, 8):
        raise line_error(source, line_no, f"expected '{Snapshot.FIELDS}', got {line!r}")
    snapshot = check_line(source, line_no, Snapshot.from_fields, fields)
    if manifest.snapshot(snapshot.tag):
        raise line_error(source, line_no, f"tag {snapshot.tag!r} is listed twice")
    manifest.snapshots.append(snapshot)


def parse_loader(
    manifest: Manifest, line: str, fields: list[str], line_no: int, source: str
) -> None:
    if manifest.branches:
        raise line_error(source, line_no, "loader lines come before the branch lines")
    if len(fields) != 6:
        raise line_error(source, line_no, f"expected '{Loader.FIELDS}', got {line!r}")
    loader = check_line(source, line_no, Loader.from_fields, fields)
    if manifest.loader(loader.version):
        raise line_error(source, line_no, f"loader {loader.version!r} is listed twice")
    manifest.loaders.append(loader)


def check_consistent(manifest: Manifest, source: str) -> None:
    """Tags that name the same image agree on its size, blocks and block hashes; the loader
    a snapshot names is listed; loader versions are unique."""
    versions = manifest.loader_versions()
    if len(set(versions)) != len(versions):
        twice = sorted({v for v in versions if versions.count(v) > 1})
        raise RepoError(f"{source}: loader {', '.join(map(repr, twice))} is listed twice")
    for line_no, snapshot in enumerate(manifest.snapshots, len(HEADER) + 1):
        if snapshot.loader is not None and snapshot.loader not in versions:
            raise line_error(
                source,
                line_no,
                f"tag {snapshot.tag!r} names loader {snapshot.loader!r}, which no loader line "
                f"lists (loaders: {', '.join(versions) or 'none'}): publish that loader first",
            )
    seen: dict[str, Snapshot] = {}
    for snapshot in manifest.snapshots:
        first = seen.setdefault(snapshot.image_sha256, snapshot)
        same = (first.image_bytes, first.block_bytes, first.blocks_sha256)
        if same != (snapshot.image_bytes, snapshot.block_bytes, snapshot.blocks_sha256):
            raise RepoError(
                f"{source}: tags {first.tag!r} and {snapshot.tag!r} name image "
                f"{snapshot.image_sha256[:16]} with different sizes or block hashes"
            )
