"""The versioned, signed OS repository (docs/os-on-demand.md), and the nginx that serves it.

``Repository`` publishes squashfs snapshots under ``REPO/snapshots/SHA.img`` with their block
hashes in ``SHA.blocks``, and keeps the signed ``REPO/manifest`` that lists them, their tags and
the branch heads. Every write holds ``REPO/.lock`` and swaps the manifest in with a rename, after
the snapshot files it mentions are complete and fsync'd: a publish killed at any point leaves the
previous manifest in force. Reading the manifest verifies its Ed25519 signature.

``RepoServer`` runs Debian's nginx in the foreground as a child, serving REPO read-only on
127.0.0.1 with Range support, and counts the bytes it sent to each guest from its access log
(the guest sends ``X-Ucvm-Instance``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from filelock import FileLock

from lab.artifacts import default_root
from lab.messages import clip
from lab.run import dead_run_dirs

FORMAT = "ucvm-manifest 1"
MANIFEST = "manifest"
SNAPSHOTS = "snapshots"
BLOCK_BYTES = 65536
RESERVED = ("newest", "previous")
TEMP_PREFIX = ".tmp-"
SQUASHFS_MAGIC = b"hsqs"
# squashfs 4.0's superblock (96 bytes, little-endian) up to bytes_used: magic, inodes, mkfs
# time, block size, fragments, compression, block_log, flags, ids, major, minor, root inode
SUPERBLOCK = struct.Struct("<IIIIIHHHHHHQQ")
SUPERBLOCK_BYTES = 96
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX_CHARS = 64  # a tag or branch is a manifest field: the guest reads at most 1 MiB of it
NAME_RULE = f"a name is [A-Za-z0-9][A-Za-z0-9._-]*, at most {NAME_MAX_CHARS} characters"
PUBLIC_KEY = "repo.pub"  # REPO/repo.pub: the public half of the key that signs the manifest
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SHA_RE = re.compile(r"[0-9a-f]{64}")
KEYID_RE = re.compile(r"[0-9a-f]{16}")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
T = TypeVar("T")


class RepoError(Exception):
    """A repository, manifest, key or server problem, with what to do about it."""


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


def default_key_path() -> Path:
    """UCVM_REPO_KEY, else ``<artifact store root>/repo-key/ed25519``."""
    if os.environ.get("UCVM_REPO_KEY"):
        return Path(os.environ["UCVM_REPO_KEY"])
    return default_root() / "repo-key" / "ed25519"


def default_repo_path() -> Path:
    """UCVM_REPO, else ``<artifact store root>/osrepo``."""
    if os.environ.get("UCVM_REPO"):
        return Path(os.environ["UCVM_REPO"])
    return default_root() / "osrepo"


# --- keys -------------------------------------------------------------------------------


def keyid_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).digest()[:8].hex()


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # the raw 32-byte Ed25519 public key

    @property
    def keyid(self) -> str:
        return keyid_of(self.raw)

    def line(self) -> str:
        """The public key file's one line: ``ed25519 KEYID BASE64(raw key)``."""
        return f"ed25519 {self.keyid} {base64.b64encode(self.raw).decode()}"

    @classmethod
    def from_line(cls, text: str, source: str = "public key") -> PublicKey:
        fields = text.strip().split(" ")
        try:
            raw = base64.b64decode(fields[2], validate=True) if len(fields) == 3 else b""
        except ValueError:
            raw = b""
        if fields[0] != "ed25519" or len(raw) != 32:
            raise RepoError(f"{source}: expected one line 'ed25519 KEYID BASE64(32-byte key)'")
        key = cls(raw)
        if fields[1] != key.keyid:
            raise RepoError(f"{source}: KEYID {fields[1]} does not match the key ({key.keyid})")
        return key

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        try:
            return cls.from_line(path.read_text(), str(path))
        except OSError as error:
            raise RepoError(
                f"{path}: cannot read the public key ({error.strerror}): set UCVM_REPO_KEY to "
                "the key that signs the repository (KEY.pub beside it suffices for reading)"
            ) from error

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """The repository's Ed25519 private key; its file is PKCS#8 PEM, mode 0600."""

    def __init__(self, private: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._private = private
        self.path = path
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def public_line(self) -> str:
        return self.public.line()

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            mode = path.stat().st_mode & 0o777
            data = path.read_bytes()
        except FileNotFoundError as error:
            raise RepoError(
                f"no repository key at {path}: set UCVM_REPO_KEY to the key that signs it"
            ) from error
        except OSError as error:
            raise RepoError(
                f"{path}: cannot read the repository key ({error.strerror}): set UCVM_REPO_KEY "
                "to the private key file (PEM) that signs the repository"
            ) from error
        if mode & 0o077:
            raise RepoError(f"{path}: private key has mode {mode:04o}: chmod 600 {path}")
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except ValueError as error:
            raise RepoError(f"{path}: not a PEM Ed25519 private key ({error})") from error
        if not isinstance(private, Ed25519PrivateKey):
            raise RepoError(f"{path}: not an Ed25519 private key")
        return cls(private, path)

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load the key at ``path``, or make one there (directory 0700, file 0600) and write
        its public line beside it in ``path.pub``. Two processes creating it at once agree."""
        if path.exists():
            return cls.load(path)
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = cls.generate()
        pem = key._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temp = write_temp(path.parent, pem, mode=0o600)
        try:
            os.link(temp, path)  # never replaces a key another process just made
        except FileExistsError:
            return cls.load(path)
        finally:
            temp.unlink()
        fsync_dir(path.parent)
        write_atomic(path.with_name(path.name + ".pub"), (key.public_line() + "\n").encode())
        return cls.load(path)


# --- files ------------------------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(directory: Path, suffix: str = "") -> Path:
    return directory / f"{TEMP_PREFIX}{secrets.token_hex(6)}{suffix}"


def write_temp(directory: Path, data: bytes, mode: int = 0o644) -> Path:
    """``data`` in a new fsync'd dotfile of ``directory`` (dotfiles are never served)."""
    temp = temp_path(directory)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    return temp


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data``: readers see the old file or the new one, never a mix."""
    temp = write_temp(path.parent, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@dataclass(frozen=True)
class ImageHashes:
    sha256: str
    size: int
    blocks: bytes  # the raw SHA-256 of every block, concatenated


def hash_image(source: Path, block_bytes: int, copy_to: Path | None = None) -> ImageHashes:
    """The image's SHA-256, size and block hashes, in one pass; copies it to ``copy_to``."""
    whole, blocks, size = hashlib.sha256(), [], 0
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(source.open("rb"))
        writer = stack.enter_context(copy_to.open("xb")) if copy_to else None
        while block := reader.read(block_bytes):
            whole.update(block)
            blocks.append(hashlib.sha256(block).digest())
            size += len(block)
            if writer:
                writer.write(block)
        if writer:
            writer.flush()
            os.fsync(writer.fileno())
    return ImageHashes(whole.hexdigest(), size, b"".join(blocks))


def check_squashfs(image: Path) -> None:
    """RepoError unless ``image`` starts with a plausible squashfs 4.0 superblock."""
    try:
        with image.open("rb") as stream:
            header = stream.read(SUPERBLOCK_BYTES)
            size = os.fstat(stream.fileno()).st_size
    except OSError as error:
        raise RepoError(f"{image}: cannot read the image ({error.strerror})") from error
    if problem := superblock_problem(header, size):
        raise RepoError(f"{image}: not a squashfs image ({problem}): make it with mksquashfs")


def superblock_problem(header: bytes, size: int) -> str | None:
    if header[:4] != SQUASHFS_MAGIC:
        return "no 'hsqs' magic"
    if len(header) < SUPERBLOCK_BYTES:
        return f"{size} bytes, shorter than the {SUPERBLOCK_BYTES}-byte superblock"
    fields = SUPERBLOCK.unpack_from(header)
    inodes, block_size, block_log, major, minor, used = (fields[i] for i in (1, 3, 6, 9, 10, 12))
    if (major, minor) != (4, 0):
        return f"squashfs version {major}.{minor}; expected 4.0"
    if block_size & (block_size - 1) or not 4096 <= block_size <= 1 << 20:
        return f"block size {block_size}; expected a power of two from 4096 to 1048576"
    if block_log > 20 or 1 << block_log != block_size:
        return f"block_log {block_log} does not match block size {block_size}"
    if used > size:
        return f"the superblock says {used:,} bytes, the file has {size:,} (truncated?)"
    if inodes == 0:
        return "no inodes"
    return None


# --- the manifest -----------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    tag: str
    branch: str
    timestamp: str
    image_sha256: str
    image_bytes: int
    block_bytes: int
    blocks_sha256: str

    FIELDS = "snapshot TAG BRANCH TIMESTAMP IMAGE_SHA256 IMAGE_BYTES BLOCK_BYTES BLOCKS_SHA256"

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
        return (
            f"snapshot {self.tag} {self.branch} {self.timestamp} {self.image_sha256} "
            f"{self.image_bytes} {self.block_bytes} {self.blocks_sha256}"
        )

    @classmethod
    def from_fields(cls, fields: list[str]) -> Snapshot:
        """From a line's fields after ``snapshot``; RepoError names the bad field."""
        tag, branch, timestamp, image_sha, image_bytes, block_bytes, blocks_sha = fields
        return cls(
            check_name("tag", tag),
            check_name("branch", branch),
            check_timestamp(timestamp),
            check_sha("IMAGE_SHA256", image_sha),
            check_count("IMAGE_BYTES", image_bytes),
            check_count("BLOCK_BYTES", block_bytes),
            check_sha("BLOCKS_SHA256", blocks_sha),
        )


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

    def render(self) -> str:
        """The manifest's text without its signature line."""
        lines = [
            FORMAT,
            f"repository {self.repository}",
            f"serial {self.serial}",
            f"published {self.published}",
            f"default-branch {self.default_branch}",
            *(s.line() for s in self.snapshots),
            *(f"branch {name} {tag}" for name, tag in self.branches.items()),
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
        if manifest.branches:
            raise line_error(source, line_no, "snapshot lines come before the branch lines")
        if len(fields) != 7:
            raise line_error(source, line_no, f"expected '{Snapshot.FIELDS}', got {line!r}")
        snapshot = check_line(source, line_no, Snapshot.from_fields, fields)
        if manifest.snapshot(snapshot.tag):
            raise line_error(source, line_no, f"tag {snapshot.tag!r} is listed twice")
        manifest.snapshots.append(snapshot)
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
    elif keyword == "signature":
        raise line_error(source, line_no, "the signature line must be the last line")
    else:
        raise line_error(
            source, line_no, f"unknown record {keyword!r}: expected snapshot, branch, signature"
        )


def check_consistent(manifest: Manifest, source: str) -> None:
    """Tags that name the same image agree on its size, blocks and block hashes."""
    seen: dict[str, Snapshot] = {}
    for snapshot in manifest.snapshots:
        first = seen.setdefault(snapshot.image_sha256, snapshot)
        same = (first.image_bytes, first.block_bytes, first.blocks_sha256)
        if same != (snapshot.image_bytes, snapshot.block_bytes, snapshot.blocks_sha256):
            raise RepoError(
                f"{source}: tags {first.tag!r} and {snapshot.tag!r} name image "
                f"{snapshot.image_sha256[:16]} with different sizes or block hashes"
            )


# --- the repository ---------------------------------------------------------------------


class Repository:
    """A repository directory. Writes hold ``REPO/.lock``; reads verify the signature."""

    def __init__(
        self, root: Path, key: SigningKey | None = None, key_path: Path | None = None
    ) -> None:
        """``key`` signs and verifies; without it, the key at ``key_path`` (default:
        default_key_path()), made by the first init."""
        self.root = Path(root)
        self._key = key
        self.key_path = (key.path if key else None) or key_path or default_key_path()

    def signing_key(self, create: bool = False) -> SigningKey:
        if self._key is None:
            load = SigningKey.load_or_create if create else SigningKey.load
            self._key = load(self.key_path)
        return self._key

    def public_key(self) -> PublicKey:
        """The key reads verify with: the signing key's public half, from KEY.pub beside the
        private key when that exists (reading needs no private key), else from the key."""
        if self._key is not None:
            return self._key.public
        beside = self.key_path.with_name(self.key_path.name + ".pub")
        if beside.is_file():
            return PublicKey.load(beside)
        return self.signing_key().public

    @property
    def public_key_path(self) -> Path:
        return self.root / PUBLIC_KEY

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def snapshots_dir(self) -> Path:
        return self.root / SNAPSHOTS

    def image_path(self, snapshot: Snapshot) -> Path:
        return self.root / snapshot.image_name

    def blocks_path(self, snapshot: Snapshot) -> Path:
        return self.root / snapshot.blocks_name

    def exists(self) -> bool:
        return self.manifest_path.exists()

    # --- reading

    def manifest(self) -> Manifest:
        return self._read(self.public_key())

    def snapshots(self) -> list[Snapshot]:
        return self.manifest().snapshots

    def resolve(self, version: str) -> Snapshot:
        return self.manifest().resolve(version)

    def _read(self, public_key: PublicKey) -> Manifest:
        try:
            data = self.manifest_path.read_bytes()
        except FileNotFoundError as error:
            raise self._not_a_repository() from error
        return Manifest.parse(data, public_key, str(self.manifest_path))

    def _not_a_repository(self) -> RepoError:
        return RepoError(
            f"{self.manifest_path}: no manifest, not a repository yet: ucvm-lab repo init "
            f"--repo {self.root} (or Repository.init)"
        )

    def verify(self) -> dict[str, list[str]]:
        """Tag -> what is wrong with its snapshot files (empty when they match the manifest).
        Each image is re-hashed once, however many tags name it."""
        manifest, checked = self.manifest(), {}
        for snapshot in manifest.snapshots:
            if snapshot.image_sha256 not in checked:
                checked[snapshot.image_sha256] = self.verify_snapshot(snapshot)
        return {s.tag: checked[s.image_sha256] for s in manifest.snapshots}

    def verify_snapshot(self, snapshot: Snapshot) -> list[str]:
        image, blocks = self.image_path(snapshot), self.blocks_path(snapshot)
        try:
            found = hash_image(image, snapshot.block_bytes)
            block_file = blocks.read_bytes()
        except OSError as error:
            return [f"{error.filename}: {error.strerror}"]
        problems = []
        if (found.sha256, found.size) != (snapshot.image_sha256, snapshot.image_bytes):
            problems.append(f"{image}: {found.size} bytes with sha256 {found.sha256[:16]}…")
        if hashlib.sha256(block_file).hexdigest() != snapshot.blocks_sha256:
            problems.append(f"{blocks}: its sha256 is not the manifest's BLOCKS_SHA256")
        elif block_file != found.blocks:
            problems.append(f"{blocks}: the block hashes do not match {image.name}")
        return problems

    # --- writing

    def init(self, name: str, default_branch: str) -> Manifest:
        """Make an empty repository signed by this key; a no-op if it exists as asked."""
        check_name("repository", name)
        check_writable_name("default branch", default_branch)
        with self._lock():
            if self.exists():
                current = self.manifest()
                if (current.repository, current.default_branch) != (name, default_branch):
                    raise RepoError(
                        f"{self.manifest_path}: already repository {current.repository!r} "
                        f"with default branch {current.default_branch!r}"
                    )
                return current
            key = self.signing_key(create=True)
            self.snapshots_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.public_key_path, (key.public_line() + "\n").encode())
            manifest = Manifest(name, 1, utc_timestamp(), default_branch)
            write_atomic(self.manifest_path, manifest.sign(key))
            return manifest

    def publish(
        self,
        image: Path,
        tag: str,
        branch: str,
        block_bytes: int = BLOCK_BYTES,
        timestamp: str | datetime | None = None,
    ) -> Snapshot:
        """Add ``image`` (a squashfs file) as ``tag`` and make it the head of ``branch``.
        Tags are immutable: the same tag with the same image is a no-op, with another image an
        error. The image is copied into the repository (never linked: editing the source
        later must not change what was published) and hashed from what was copied."""
        stamp = timestamp if isinstance(timestamp, str) else utc_timestamp(timestamp)
        check_timestamp(stamp)
        check_block_bytes(block_bytes)
        check_squashfs(image)
        with self._writing() as (key, current), self._staged(image, block_bytes) as staged:
            check_new_names(current, tag=tag, branch=branch)
            temp, hashes = staged
            snapshot = Snapshot(
                tag, branch, stamp, hashes.sha256, hashes.size, block_bytes,
                hashlib.sha256(hashes.blocks).hexdigest(),
            )  # fmt: skip
            if existing := republished(current, snapshot):
                return existing
            check_same_blocks(current, hashes.sha256, block_bytes)
            self._place(temp, hashes)
            branches = {**current.branches, branch: tag}
            self._write(key, current, [*current.snapshots, snapshot], branches)
            return snapshot

    def tag(self, existing: str, new: str) -> Snapshot:
        """Give the snapshot tagged ``existing`` the further tag ``new`` (on its branch)."""
        with self._writing() as (key, current):
            old = tag_of(current, existing)
            check_new_names(current, tag=new)
            snapshot = replace(old, tag=new, timestamp=utc_timestamp())
            if found := current.snapshot(new):
                if found.image_sha256 == old.image_sha256:
                    return found
                raise immutable_tag(found, old.image_sha256)
            self._write(key, current, [*current.snapshots, snapshot], current.branches)
            return snapshot

    def branch(self, name: str, tag: str) -> Snapshot:
        """Create branch ``name``, or move its head, to the snapshot tagged ``tag``."""
        with self._writing() as (key, current):
            snapshot = tag_of(current, tag)
            check_new_names(current, branch=name)
            if current.branches.get(name) != tag:
                branches = {**current.branches, name: tag}
                self._write(key, current, current.snapshots, branches)
            return snapshot

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            self._remove_temps()
            yield

    @contextlib.contextmanager
    def _writing(self) -> Iterator[tuple[SigningKey, Manifest]]:
        with self._lock():
            key = self.check_key()
            current = self._read(key.public)
            if not self.public_key_path.exists():  # a repository older than REPO/repo.pub
                write_atomic(self.public_key_path, (key.public_line() + "\n").encode())
            yield key, current

    def check_key(self) -> SigningKey:
        """The signing key, if this is a repository and the key is the one whose public half
        it publishes in REPO/repo.pub: only that key may write to it."""
        if not self.exists():
            raise self._not_a_repository()
        key = self.signing_key()
        if not self.public_key_path.exists():
            return key  # written by the first write, once the key verified the manifest
        published = PublicKey.load(self.public_key_path)
        if published.keyid != key.keyid:
            raise RepoError(
                f"{key.path or 'the given key'} (key {key.keyid}) is not the key of {self.root} "
                f"(its {PUBLIC_KEY} is key {published.keyid}): set UCVM_REPO_KEY to the key "
                "that made the repository"
            )
        return key

    def _remove_temps(self) -> None:
        """What writers killed before their rename left (we hold the lock: none is live)."""
        for directory in (self.root, self.snapshots_dir):
            for temp in directory.glob(TEMP_PREFIX + "*"):
                temp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _staged(self, image: Path, block_bytes: int) -> Iterator[tuple[Path, ImageHashes]]:
        """A copy of the image in a temporary file of snapshots/, and the hashes of what was
        copied; the file is gone afterwards unless _place() renamed it into place."""
        self.snapshots_dir.mkdir(exist_ok=True)
        temp = temp_path(self.snapshots_dir, ".img")
        try:
            hashes = hash_image(image, block_bytes, copy_to=temp)
            check_squashfs(temp)  # what is published, should the source have changed meanwhile
            yield temp, hashes
        finally:
            temp.unlink(missing_ok=True)

    def _place(self, temp: Path, hashes: ImageHashes) -> None:
        """snapshots/SHA.img and SHA.blocks, complete and fsync'd, before a manifest names them."""
        final = self.snapshots_dir / f"{hashes.sha256}.img"
        if not final.exists():  # content-addressed: an existing one is this image
            os.replace(temp, final)
        write_atomic(final.with_suffix(".blocks"), hashes.blocks)
        fsync_dir(self.snapshots_dir)

    def _write(
        self,
        key: SigningKey,
        current: Manifest,
        snapshots: list[Snapshot],
        branches: dict[str, str],
    ) -> None:
        manifest = replace(
            current,
            serial=current.serial + 1,
            published=utc_timestamp(),
            snapshots=snapshots,
            branches=branches,
        )
        write_atomic(self.manifest_path, manifest.sign(key))


MAX_BLOCK_BYTES = 16 << 20  # the guest's block client takes no larger block


def check_block_bytes(block_bytes: int) -> None:
    if block_bytes < 4096 or block_bytes % 4096 or block_bytes > MAX_BLOCK_BYTES:
        raise RepoError(
            f"block size {block_bytes}: expected a multiple of 4096 from 4096 to {MAX_BLOCK_BYTES}"
        )


def check_writable_name(kind: str, name: str) -> None:
    check_name(kind, name)
    if name in RESERVED:
        raise RepoError(f"{kind} {name!r}: newest and previous are versions, not names")


def check_new_names(current: Manifest, tag: str | None = None, branch: str | None = None) -> None:
    """Names stay unambiguous for resolve(): no tag named like a branch, or the reverse."""
    if tag is not None:
        check_writable_name("tag", tag)
        if tag in current.branches:
            raise RepoError(f"tag {tag!r}: a branch has that name; choose another tag")
    if branch is not None:
        check_writable_name("branch", branch)
        if current.snapshot(branch):
            raise RepoError(f"branch {branch!r}: a tag has that name; choose another branch")


def check_same_blocks(current: Manifest, sha256: str, block_bytes: int) -> None:
    """An image's SHA.blocks is shared by every tag of it, so its block size is fixed."""
    for snapshot in current.snapshots:
        if snapshot.image_sha256 == sha256 and snapshot.block_bytes != block_bytes:
            raise RepoError(
                f"image {sha256[:16]} is already published as {snapshot.tag!r} with "
                f"{snapshot.block_bytes}-byte blocks: publish it with that block size"
            )


def tag_of(current: Manifest, tag: str) -> Snapshot:
    if snapshot := current.snapshot(tag):
        return snapshot
    raise RepoError(f"no tag {tag!r}; tags: {', '.join(current.tags()) or 'none'}")


def immutable_tag(existing: Snapshot, image_sha256: str) -> RepoError:
    return RepoError(
        f"tag {existing.tag!r} already names image {existing.image_sha256[:16]}…, not "
        f"{image_sha256[:16]}…: tags are immutable; publish under a new tag"
    )


def republished(current: Manifest, snapshot: Snapshot) -> Snapshot | None:
    """The existing snapshot if this publish repeats it, None if the tag is new."""
    existing = current.snapshot(snapshot.tag)
    if existing is None:
        return None
    if existing.image_sha256 != snapshot.image_sha256:
        raise immutable_tag(existing, snapshot.image_sha256)
    if existing.branch != snapshot.branch:
        raise RepoError(
            f"tag {existing.tag!r} was published on branch {existing.branch!r}: to make it the "
            f"head of {snapshot.branch!r}: ucvm-lab repo branch {snapshot.branch} {existing.tag}"
        )
    return existing


# --- the HTTP server --------------------------------------------------------------------

NGINX = "/usr/sbin/nginx"
PID_FILE = "nginx.pid"
CONF_FILE = "nginx.conf"
ACCESS_LOG = "access.log"
ERROR_LOG = "error.log"
SYNC_PREFIX = "/.ucvm-sync-"
START_ATTEMPTS = 5
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
LOG_FIELDS = (
    "$msec", "$http_x_ucvm_instance", "$status", "$body_bytes_sent", "$bytes_sent",
    "$request_method", "$uri", "$http_range",
)  # fmt: skip


@dataclass(frozen=True)
class AccessRecord:
    """One line of the server's access log ("" for a header the request did not send)."""

    msec: float
    instance: str
    status: int
    body_bytes: int
    total_bytes: int
    method: str
    uri: str
    range: str

    @property
    def kind(self) -> str:
        """manifest, blocks, image or other."""
        if self.uri == "/" + MANIFEST:
            return "manifest"
        if self.uri.startswith(f"/{SNAPSHOTS}/"):
            return {".blocks": "blocks", ".img": "image"}.get(Path(self.uri).suffix, "other")
        return "other"

    @classmethod
    def parse(cls, line: str) -> AccessRecord | None:
        fields = [("" if f == "-" else f) for f in line.rstrip("\n").split("\t")]
        if len(fields) != len(LOG_FIELDS):
            return None
        msec, instance, status, body, total, method, uri, byte_range = fields
        try:
            return cls(
                float(msec), instance, int(status), int(body), int(total), method, uri,
                byte_range,
            )  # fmt: skip
        except ValueError:
            return None


@dataclass(frozen=True)
class Transfer:
    requests: int = 0
    body_bytes: int = 0  # the bodies (file data) sent
    total_bytes: int = 0  # with the response headers

    def __add__(self, other: Transfer) -> Transfer:
        return Transfer(
            self.requests + other.requests,
            self.body_bytes + other.body_bytes,
            self.total_bytes + other.total_bytes,
        )


@dataclass(frozen=True)
class TransferTotals(Transfer):
    """What the server sent one instance, in all and by kind (manifest, blocks, image)."""

    by_kind: dict[str, Transfer] = field(default_factory=dict)

    def kind(self, name: str) -> Transfer:
        return self.by_kind.get(name, Transfer())

    @property
    def snapshots(self) -> Transfer:
        """The snapshot files (images and their block hashes), without the manifest."""
        return self.kind("image") + self.kind("blocks")

    @property
    def image_body_bytes(self) -> int:
        """The image data sent: what the guest's block client fetched."""
        return self.kind("image").body_bytes

    @classmethod
    def of(cls, records: list[AccessRecord]) -> TransferTotals:
        by_kind: dict[str, Transfer] = {}
        for record in records:
            one = Transfer(1, record.body_bytes, record.total_bytes)
            by_kind[record.kind] = by_kind.get(record.kind, Transfer()) + one
        total = sum(by_kind.values(), Transfer())
        return cls(total.requests, total.body_bytes, total.total_bytes, by_kind)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def conf_path_value(path: Path) -> str:
    """A path as an nginx config string; refuses what nginx would read as syntax."""
    text = str(path.resolve())
    if any(c in text for c in '"$\\;{}\n'):
        raise RepoError(f"{text}: nginx cannot take this path (quotes, $, braces or ;)")
    return f'"{text}"'


def nginx_conf(root: Path, run_dir: Path, host: str, port: int) -> str:
    """One nginx process (master_process off: nothing to orphan), serving ``root`` read-only."""
    run = run_dir.resolve()
    tmp = {name: conf_path_value(run / "tmp" / name) for name in
           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}  # fmt: skip
    log_format = "\\t".join(LOG_FIELDS)
    lines = [
        "user root;" if os.geteuid() == 0 else "",
        "master_process off;",
        f"pid {conf_path_value(run / PID_FILE)};",
        f"error_log {conf_path_value(run / ERROR_LOG)} warn;",
        "events { worker_connections 1024; }",
        "http {",
        "    default_type application/octet-stream;",
        f"    log_format ucvm '{log_format}';",
        f"    access_log {conf_path_value(run / ACCESS_LOG)} ucvm;",
        *(f"    {name}_temp_path {value};" for name, value in tmp.items()),
        "    sendfile on;",
        "    server_tokens off;",
        "    server {",
        f"        listen {host}:{port};",
        f"        root {conf_path_value(root)};",
        "        autoindex off;",
        "        disable_symlinks on;",  # a link in the tree cannot point nginx elsewhere
        "        log_not_found off;",
        f"        location ^~ {SYNC_PREFIX} {{ return 204; }}",
        "        location ~ /\\. { deny all; }",
        "        location / { limit_except GET { deny all; } }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def nginx_command(run_dir: Path) -> list[str]:
    """nginx in the foreground; ``setpriv --pdeathsig`` ends it if the lab dies (the signal
    comes when the *thread* that started it ends: start servers from the main thread)."""
    command = [
        NGINX, "-p", f"{run_dir.resolve()}/", "-c", str(run_dir.resolve() / CONF_FILE),
        "-e", str(run_dir.resolve() / ERROR_LOG), "-g", "daemon off;",
    ]  # fmt: skip
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *command] if setpriv else command


def read_pid(pid_file: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().strip())
    return None


def process_alive(pid: int) -> bool:
    """Running (not a zombie), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


class RepoServer:
    """nginx serving a repository on ``host`` (127.0.0.1): a context manager, restartable
    (stop(), then start() serves on the same port again). Its files live in ``run_dir``."""

    def __init__(
        self, root: Path, run_dir: Path, host: str = "127.0.0.1", port: int | None = None
    ) -> None:
        self.root = Path(root)
        self.run_dir = Path(run_dir)
        self.host = host
        self._port = port
        self._fixed_port = port is not None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RepoServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RepoError("the repository server has not started yet")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def access_log(self) -> Path:
        return self.run_dir / ACCESS_LOG

    @property
    def error_log(self) -> Path:
        return self.run_dir / ERROR_LOG

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start nginx, on the port it had before if it ran already (a guest keeps its URL)."""
        if self.running():
            return
        if not Path(NGINX).exists():
            raise RepoError(f"{NGINX} is missing: apt-get install nginx-light")
        if not (self.root / MANIFEST).is_file():
            raise RepoError(f"{self.root / MANIFEST}: missing: serve a repository")
        key = default_key_path().resolve()
        if key.is_relative_to(self.root.resolve()):
            raise RepoError(
                f"the signing key {key} is inside {self.root}, which would serve it: "
                "move it out (UCVM_REPO_KEY) before serving"
            )
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        problem = ""
        for _ in range(START_ATTEMPTS):
            port = self._port if self._port is not None else free_port(self.host)
            problem = self._launch(port)
            if not problem:
                self._port = port
                return
            if "in use" not in problem:
                break
            if self._fixed_port:
                time.sleep(0.5)
        raise RepoError(f"nginx did not start ({self.error_log}): {problem}")

    def _launch(self, port: int) -> str:
        """Start nginx on ``port``: "" once it listens, else what went wrong."""
        (self.run_dir / CONF_FILE).write_text(nginx_conf(self.root, self.run_dir, self.host, port))
        (self.run_dir / PID_FILE).unlink(missing_ok=True)
        offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        with (self.run_dir / "nginx.out").open("ab") as output:
            process = subprocess.Popen(
                nginx_command(self.run_dir),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of `repo serve` is ours to handle
            )
        if self._wait_listening(process):
            self._process = process
            return ""
        stop_process(process)
        return self._errors_since(offset) or f"nginx exited with status {process.returncode}"

    def _wait_listening(self, process: subprocess.Popen[bytes]) -> bool:
        """nginx writes its pid file once its socket listens; False if it exits first."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if read_pid(self.run_dir / PID_FILE) == process.pid:
                return True
            time.sleep(0.02)
        return False

    def _errors_since(self, offset: int) -> str:
        try:
            with self.error_log.open("rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        errors = [line for line in text.splitlines() if "[emerg]" in line or "[alert]" in line]
        return errors[0] if errors else ""  # the cause; the last one is a summary

    def stop(self) -> None:
        """Stop nginx: SIGTERM, then SIGKILL if it has not exited in a few seconds."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)

    def wait(self) -> int:
        """Block until nginx exits (for `repo serve`); its exit status."""
        if self._process is None:
            return 0
        return self._process.wait()

    # --- what was sent

    def records(self, sync: bool = True) -> list[AccessRecord]:
        """The access log's records. ``sync`` first makes sure every request whose response
        a client has received is logged (nginx logs after the response)."""
        if sync and self.running():
            self._sync()
        try:
            lines = self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        parsed = (AccessRecord.parse(line) for line in lines)
        return [r for r in parsed if r and not r.uri.startswith(SYNC_PREFIX)]

    def bytes_sent(self, instance: str) -> TransferTotals:
        """What the server sent to requests with ``X-Ucvm-Instance: instance``."""
        return TransferTotals.of([r for r in self.records() if r.instance == instance])

    def _sync(self) -> None:
        """One process handles requests in order: once a marker request is logged, every
        response completed before it is logged too."""
        marker = SYNC_PREFIX + secrets.token_hex(8)
        request = urllib.request.Request(self.url.rstrip("/") + marker)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
        with contextlib.suppress(urllib.error.URLError, OSError):
            direct.open(request, timeout=5).close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if marker in self.access_log.read_text(errors="replace"):
                    return
            time.sleep(0.01)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def nginx_of(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` is an nginx started with a config inside ``run_dir``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    inside = str(run_dir.resolve()).encode() + b"/"
    return any(a.endswith(b"nginx") for a in argv) and any(a.startswith(inside) for a in argv)


def sweep_servers(run_root: Path) -> list[str]:
    """Kill the repository servers that dead runs under ``run_root`` left running (call it
    before their files are swept: it finds them by their pid files)."""
    killed = []
    for run_dir in dead_run_dirs(run_root):
        for pid_file in run_dir.rglob(PID_FILE):
            pid = read_pid(pid_file)
            if pid and process_alive(pid) and nginx_of(pid, pid_file.parent):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(f"nginx {pid} ({pid_file.parent})")
    return killed
