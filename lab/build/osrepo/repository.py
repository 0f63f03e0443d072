"""The versioned, signed OS repository (docs/os-on-demand.md): a directory and its writes.

``Repository`` publishes squashfs snapshots under ``REPO/snapshots/SHA.img`` with their block
hashes in ``SHA.blocks``, boot loader versions as ``REPO/loaders/SHA.kernel`` and
``SHA.initrd``, and keeps the signed ``REPO/manifest`` (manifest.py) that lists them, their
tags and the branch heads. Every write holds ``REPO/.lock`` and swaps the manifest in with a
rename, after the files it mentions are complete and fsync'd: a publish killed at any point
leaves the previous manifest in force. Reading the manifest verifies its Ed25519 signature.
What serves the directory to guests is lab.services.repo.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from filelock import FileLock

from lab.artifacts import default_root
from lab.build.osrepo.files import TEMP_PREFIX, fsync_dir, temp_path, write_atomic
from lab.build.osrepo.keys import PublicKey, RepoError, SigningKey, default_key_path
from lab.build.osrepo.manifest import (
    LOADERS,
    MANIFEST,
    SNAPSHOTS,
    Loader,
    Manifest,
    Promotion,
    Snapshot,
    check_name,
    check_timestamp,
    utc_timestamp,
)

BLOCK_BYTES = 65536
RESERVED = ("newest", "previous")
SQUASHFS_MAGIC = b"hsqs"
# squashfs 4.0's superblock (96 bytes, little-endian) up to bytes_used: magic, inodes, mkfs
# time, block size, fragments, compression, block_log, flags, ids, major, minor, root inode
SUPERBLOCK = struct.Struct("<IIIIIHHHHHHQQ")
SUPERBLOCK_BYTES = 96
PUBLIC_KEY = "repo.pub"  # REPO/repo.pub: the public half of the key that signs the manifest


def default_repo_path() -> Path:
    """UCVM_REPO, else ``<artifact store root>/osrepo``."""
    if os.environ.get("UCVM_REPO"):
        return Path(os.environ["UCVM_REPO"])
    return default_root() / "osrepo"


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

    @property
    def loaders_dir(self) -> Path:
        return self.root / LOADERS

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
        """Tag -> what is wrong with its snapshot files (empty when they match the manifest),
        then ``loader VERSION`` -> what is wrong with that loader's kernel and initramfs.
        Each image is re-hashed once, however many tags name it."""
        manifest, checked = self.manifest(), {}
        for snapshot in manifest.snapshots:
            if snapshot.image_sha256 not in checked:
                checked[snapshot.image_sha256] = self.verify_snapshot(snapshot)
        found = {s.tag: checked[s.image_sha256] for s in manifest.snapshots}
        for loader in manifest.loaders:
            found[loader_key(loader.version)] = self.verify_loader(loader)
        return found

    def verify_loader(self, loader: Loader) -> list[str]:
        problems = []
        for name, sha256, size in loader.files():
            try:
                found = hash_image(self.root / name, 1 << 20)
            except OSError as error:
                problems.append(f"{error.filename}: {error.strerror}")
                continue
            if (found.sha256, found.size) != (sha256, size):
                problems.append(
                    f"{self.root / name}: {found.size} bytes with sha256 {found.sha256[:16]}…, "
                    f"not the manifest's {size} bytes"
                )
        return problems

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
        loader: str | None = None,
    ) -> Snapshot:
        """Add ``image`` (a squashfs file) as ``tag`` and make it the head of ``branch``; with
        ``loader``, the tag names that published boot loader version.
        Tags are immutable: the same tag with the same image (and loader) is a no-op, with
        another image an error. The image is copied into the repository (never linked:
        editing the source later must not change what was published) and hashed from what
        was copied."""
        stamp = timestamp if isinstance(timestamp, str) else utc_timestamp(timestamp)
        check_timestamp(stamp)
        check_block_bytes(block_bytes)
        check_squashfs(image)
        with self._writing() as (key, current), self._staged(image, block_bytes) as staged:
            check_new_names(current, tag=tag, branch=branch)
            check_loader_published(current, loader)
            temp, hashes = staged
            snapshot = Snapshot(
                tag, branch, stamp, hashes.sha256, hashes.size, block_bytes,
                hashlib.sha256(hashes.blocks).hexdigest(), loader,
            )  # fmt: skip
            if existing := republished(current, snapshot):
                return existing
            check_same_blocks(current, hashes.sha256, block_bytes)
            self._place(temp, hashes)
            branches = {**current.branches, branch: tag}
            self._write(key, current, [*current.snapshots, snapshot], branches)
            return snapshot

    def publish_loader(
        self,
        version: str,
        kernel: Path,
        initrd: Path,
        timestamp: str | datetime | None = None,
    ) -> Loader:
        """Add boot loader ``version``: its kernel and initramfs, copied into ``loaders/``
        under their sha256. Versions are immutable, like tags: the same files again are a
        no-op, other files an error."""
        stamp = timestamp if isinstance(timestamp, str) else utc_timestamp(timestamp)
        check_timestamp(stamp)
        check_writable_name("loader version", version)
        check_loader_file("kernel", kernel, kernel_problem)
        check_loader_file("initrd", initrd, initrd_problem)
        with self._writing() as (key, current), contextlib.ExitStack() as stack:
            self.loaders_dir.mkdir(exist_ok=True)
            kernel_temp, kernel_hashes = stack.enter_context(self._copied(kernel))
            initrd_temp, initrd_hashes = stack.enter_context(self._copied(initrd))
            loader = Loader(
                version, stamp, kernel_hashes.sha256, kernel_hashes.size,
                initrd_hashes.sha256, initrd_hashes.size,
            )  # fmt: skip
            if existing := republished_loader(current, loader):
                return existing
            self._place_loader_file(kernel_temp, loader.kernel_name)
            self._place_loader_file(initrd_temp, loader.initrd_name)
            self._write(
                key, current, current.snapshots, current.branches, [*current.loaders, loader]
            )
            return loader

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

    def promote(self, branch: str, tag: str, evidence: str) -> Promotion:
        """Move ``branch`` to ``tag`` and record why (a verdict's sha256, or FORCED), in one
        atomic manifest write: the branch never moves without its record."""
        with self._writing() as (key, current):
            tag_of(current, tag)
            check_new_names(current, branch=branch)
            promotion = Promotion(branch, tag, utc_timestamp(), evidence)
            promotion = Promotion.from_fields(promotion.line().split(" ")[1:])  # checked
            branches = {**current.branches, branch: tag}
            self._write(
                key, replace(current, promotions=[*current.promotions, promotion]),
                current.snapshots, branches,
            )  # fmt: skip
            return promotion

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
        for directory in (self.root, self.snapshots_dir, self.loaders_dir):
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

    @contextlib.contextmanager
    def _copied(self, source: Path) -> Iterator[tuple[Path, ImageHashes]]:
        """A copy of ``source`` in a temporary file of loaders/ and the sha256 of what was
        copied; the file is gone afterwards unless _place_loader_file() renamed it."""
        temp = temp_path(self.loaders_dir)
        try:
            yield temp, hash_image(source, 1 << 20, copy_to=temp)
        finally:
            temp.unlink(missing_ok=True)

    def _place_loader_file(self, temp: Path, name: str) -> None:
        """loaders/SHA.kernel or SHA.initrd, complete and fsync'd, before a manifest names it."""
        final = self.root / name
        if not final.exists():  # content-addressed: an existing one is this file
            os.replace(temp, final)
        fsync_dir(self.loaders_dir)

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
        loaders: list[Loader] | None = None,
    ) -> None:
        manifest = replace(
            current,
            serial=current.serial + 1,
            published=utc_timestamp(),
            snapshots=snapshots,
            branches=branches,
            loaders=current.loaders if loaders is None else loaders,
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
    if existing.loader != snapshot.loader:
        raise RepoError(
            f"tag {existing.tag!r} was published with loader {loader_text(existing.loader)}, "
            f"not {loader_text(snapshot.loader)}: tags are immutable; publish under a new tag"
        )
    if existing.branch != snapshot.branch:
        raise RepoError(
            f"tag {existing.tag!r} was published on branch {existing.branch!r}: to make it the "
            f"head of {snapshot.branch!r}: ucvm-lab repo branch {snapshot.branch} {existing.tag}"
        )
    return existing


# --- boot loader versions -----------------------------------------------------------------

LINUX_BOOT_HEADER = (0x202, b"HdrS")  # x86 Linux boot protocol: bzImage's setup header magic
INITRD_MAGICS = {
    b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd",
    b"\x02\x21\x4c\x18": "lz4", b"\x04\x22\x4d\x18": "lz4", b"BZh": "bzip2",
    b"\x89LZO": "lzo", b"070701": "cpio", b"070702": "cpio",
}  # fmt: skip


def loader_key(version: str) -> str:
    """verify()'s key for a loader (tags have no spaces, so it never collides with one)."""
    return f"loader {version}"


def loader_text(version: str | None) -> str:
    return "none" if version is None else repr(version)


def kernel_problem(head: bytes) -> str | None:
    offset, magic = LINUX_BOOT_HEADER
    if head[offset : offset + len(magic)] != magic:
        return f"no {magic.decode()!r} boot header at {offset:#x}: not a Linux bzImage"
    return None


def initrd_problem(head: bytes) -> str | None:
    if any(head.startswith(magic) for magic in INITRD_MAGICS):
        return None
    kinds = ", ".join(sorted(set(INITRD_MAGICS.values())))
    return f"not an initramfs (expected a {kinds} archive, found {head[:6]!r})"


def check_loader_file(kind: str, path: Path, problem_of: Callable[[bytes], str | None]) -> None:
    """RepoError unless ``path`` is a readable, non-empty file that looks like a ``kind``."""
    try:
        with path.open("rb") as stream:
            head = stream.read(4096)
    except OSError as error:
        raise RepoError(f"{path}: cannot read the {kind} ({error.strerror})") from error
    if not head:
        raise RepoError(f"{path}: the {kind} is empty")
    if problem := problem_of(head):
        option = "--kernel" if kind == "kernel" else "--initrd"
        raise RepoError(f"{path}: {problem}; give {option} the loader's {kind}")


def check_loader_published(current: Manifest, version: str | None) -> None:
    if version is None or current.loader(version):
        return
    check_name("loader version", version)
    published = ", ".join(current.loader_versions()) or "none"
    raise RepoError(
        f"loader {version!r} is not published (loaders: {published}): publish it first: "
        f"ucvm-lab repo publish-loader {version} --kernel KERNEL --initrd INITRD"
    )


def republished_loader(current: Manifest, loader: Loader) -> Loader | None:
    """The existing loader if this publish repeats it, None if the version is new."""
    existing = current.loader(loader.version)
    if existing is None:
        return None
    if (existing.kernel_sha256, existing.initrd_sha256) != (
        loader.kernel_sha256,
        loader.initrd_sha256,
    ):
        raise RepoError(
            f"loader {existing.version!r} already has kernel {existing.kernel_sha256[:16]}… and "
            f"initrd {existing.initrd_sha256[:16]}…, not {loader.kernel_sha256[:16]}… and "
            f"{loader.initrd_sha256[:16]}…: loader versions are immutable; publish under a new "
            "version"
        )
    return existing
