"""The OS repository (docs/os-on-demand.md): signed manifest, immutable tags, atomic publish,
and the nginx that serves it. Real squashfs images (mksquashfs) and a real nginx."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.build.osrepo.keys import PublicKey, RepoError, SigningKey, default_key_path
from lab.build.osrepo.manifest import FORCED, Manifest
from lab.build.osrepo.repository import Repository, default_repo_path
from lab.run import Run, new_run_id
from lab.services import repo as repo_service
from lab.services.repo import RepoServer, Transfer, TransferTotals, process_alive, sweep_servers

REPO = Path(__file__).resolve().parent.parent
STAMP = "2026-01-02T03:04:05Z"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # whatever http_proxy says


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.load_or_create(tmp_path / "keys" / "ed25519")


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """A real squashfs image of a small tree; ``payload`` makes images differ."""

    def make(name: str, payload: bytes = b"", size: int = 300_000) -> Path:
        tree = tmp_path / "trees" / name
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "os-release").write_text(f"NAME={name}\n")
        (tree / "data").write_bytes(payload + os.urandom(size))  # incompressible: many blocks
        image = tmp_path / "images" / f"{name}.squashfs"
        image.parent.mkdir(exist_ok=True)
        subprocess.run(
            ["mksquashfs", tree, image, "-noappend", "-quiet", "-no-progress"], check=True
        )
        return image

    return make


@pytest.fixture
def repo(tmp_path: Path, key: SigningKey) -> Repository:
    repository = Repository(tmp_path / "repo", key=key)
    repository.init("test", default_branch="prod")
    return repository


@pytest.fixture
def published(repo: Repository, make_image: Callable[..., Path]) -> Repository:
    """v1 then v2 on prod, v2 also tagged v2-lts, branch testing at v1."""
    repo.publish(make_image("one"), "v1", "prod", timestamp=STAMP)
    repo.publish(make_image("two"), "v2", "prod")
    repo.tag("v2", "v2-lts")
    repo.branch("testing", "v1")
    return repo


def alive(pid: int) -> bool:
    return process_alive(pid)


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def temps(repo: Repository) -> list[Path]:
    return list(repo.root.glob(".tmp-*")) + list(repo.snapshots_dir.glob(".tmp-*"))


# --- keys -------------------------------------------------------------------------------


def test_a_new_key_is_private_and_its_public_line_follows_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "store" / "repo-key" / "ed25519"
    key = SigningKey.load_or_create(path)

    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    kind, keyid, raw64 = key.public_line().split(" ")
    raw = base64.b64decode(raw64)
    assert (kind, len(raw)) == ("ed25519", 32)
    assert keyid == key.keyid == hashlib.sha256(raw).digest()[:8].hex()
    assert (tmp_path / "store/repo-key/ed25519.pub").read_text() == key.public_line() + "\n"
    assert SigningKey.load_or_create(path).keyid == key.keyid  # loaded, not replaced
    assert PublicKey.from_line(key.public_line()) == key.public


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ed25519"
    SigningKey.load_or_create(path)
    path.chmod(0o644)

    with pytest.raises(RepoError, match=rf"mode 0644: chmod 600 {path}"):
        SigningKey.load(path)


def test_default_key_and_repository_live_in_the_artifact_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UCVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UCVM_REPO_KEY", raising=False)
    monkeypatch.delenv("UCVM_REPO", raising=False)
    assert default_key_path() == tmp_path / "cache" / "repo-key" / "ed25519"
    assert default_repo_path() == tmp_path / "cache" / "osrepo"
    monkeypatch.setenv("UCVM_REPO_KEY", "/elsewhere/key")
    monkeypatch.setenv("UCVM_REPO", "/elsewhere/repo")
    assert default_key_path() == Path("/elsewhere/key")
    assert default_repo_path() == Path("/elsewhere/repo")


# --- publish, tag, branch, list ---------------------------------------------------------


def test_publish_tag_branch_list_round_trip(published: Repository) -> None:
    manifest = published.manifest()

    assert manifest.repository == "test" and manifest.default_branch == "prod"
    assert manifest.serial == 5  # init, two publishes, a tag, a branch
    assert manifest.tags() == ["v1", "v2", "v2-lts"]
    assert manifest.branches == {"prod": "v2", "testing": "v1"}
    assert manifest.heads() == {"v2": ["prod"], "v1": ["testing"]}
    assert published.snapshots() == manifest.snapshots
    v1, v2, lts = manifest.snapshots
    assert v1.timestamp == STAMP
    assert (lts.image_sha256, lts.branch) == (v2.image_sha256, "prod")
    for snapshot in (v1, v2):
        image = published.image_path(snapshot).read_bytes()
        blocks = published.blocks_path(snapshot).read_bytes()
        assert hashlib.sha256(image).hexdigest() == snapshot.image_sha256
        assert len(image) == snapshot.image_bytes and snapshot.block_count > 1
        assert hashlib.sha256(blocks).hexdigest() == snapshot.blocks_sha256
        size = snapshot.block_bytes
        assert blocks == b"".join(
            hashlib.sha256(image[i : i + size]).digest() for i in range(0, len(image), size)
        )
    assert published.verify() == {"v1": [], "v2": [], "v2-lts": []}
    assert temps(published) == []


def test_the_manifest_text_is_the_contracts(published: Repository) -> None:
    lines = published.manifest_path.read_text().splitlines()
    v1 = published.manifest().snapshot("v1")
    assert v1 is not None

    assert lines[:3] == ["ucvm-manifest 1", "repository test", "serial 5"]
    assert lines[3].startswith("published ") and lines[4] == "default-branch prod"
    assert lines[5] == (
        f"snapshot v1 prod {STAMP} {v1.image_sha256} {v1.image_bytes} 65536 {v1.blocks_sha256}"
    )
    assert lines[8:10] == ["branch prod v2", "branch testing v1"]
    assert lines[10].startswith(f"signature ed25519 {published.signing_key().keyid} ")
    assert len(lines) == 11


def test_the_image_is_copied_so_editing_its_source_changes_nothing_published(
    repo: Repository, make_image: Callable[..., Path]
) -> None:
    source = make_image("source")
    original = source.read_bytes()
    snapshot = repo.publish(source, "v1", "prod")
    published = repo.image_path(snapshot)
    assert published.stat().st_ino != source.stat().st_ino and published.stat().st_nlink == 1

    with source.open("r+b") as stream:  # in place, as a rebuild writing over it would
        stream.seek(5000)
        stream.write(b"edited")

    assert published.read_bytes() == original
    assert repo.verify() == {"v1": []}


def test_what_is_not_a_squashfs_image_is_refused(repo: Repository, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(RepoError, match=rf"{text}: not a squashfs image"):
        repo.publish(text, "v1", "prod")


def patched(image: Path, offset: int, fmt: str, value: int) -> Path:
    """A copy of ``image`` with one superblock field (at ``offset``) set to ``value``."""
    data = bytearray(image.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    bad = image.with_name(f"bad-{offset}-{value}.squashfs")
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "problem"),
    [
        (28, "<H", 3, "squashfs version 3.0; expected 4.0"),
        (30, "<H", 1, "squashfs version 4.1; expected 4.0"),
        (12, "<I", 3000, "block size 3000; expected a power of two from 4096 to 1048576"),
        (12, "<I", 2 << 20, "block size 2097152; expected a power of two"),
        (12, "<I", 65536, "block_log 17 does not match block size 65536"),
        (22, "<H", 40, "block_log 40 does not match block size 131072"),
        (40, "<Q", 10**12, "the superblock says 1,000,000,000,000 bytes, the file has"),
        (4, "<I", 0, "no inodes"),
    ],
)
def test_a_squashfs_superblock_that_does_not_hold_is_refused(
    repo: Repository,
    make_image: Callable[..., Path],
    offset: int,
    fmt: str,
    value: int,
    problem: str,
) -> None:
    bad = patched(make_image("one"), offset, fmt, value)
    with pytest.raises(RepoError) as error:
        repo.publish(bad, "v1", "prod")
    assert str(error.value).startswith(f"{bad}: not a squashfs image ({problem}")
    assert str(error.value).endswith(": make it with mksquashfs")
    assert repo.manifest().snapshots == []


def test_a_truncated_squashfs_is_refused(repo: Repository, make_image: Callable[..., Path]) -> None:
    image = make_image("one")
    short = image.with_name("short.squashfs")
    short.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(RepoError, match=rf"{short}: .*the superblock says .* bytes, the file has"):
        repo.publish(short, "v1", "prod")
    short.write_bytes(image.read_bytes()[:50])
    with pytest.raises(RepoError, match=r"50 bytes, shorter than the 96-byte superblock"):
        repo.publish(short, "v1", "prod")


def test_publishing_into_a_directory_that_is_no_repository_says_how_to_make_one(
    tmp_path: Path, key: SigningKey, make_image: Callable[..., Path]
) -> None:
    empty = Repository(tmp_path / "nothing", key=key)
    with pytest.raises(RepoError, match="no manifest, not a repository yet: ucvm-lab repo init"):
        empty.publish(make_image("one"), "v1", "prod")


# --- resolve ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "tag"),
    [("newest", "v2"), ("", "v2"), ("previous", "v1"), ("testing", "v1"), ("prod", "v2"),
     ("v2-lts", "v2-lts"), ("v1", "v1")],
)  # fmt: skip
def test_resolve_follows_the_contracts_table(published: Repository, version: str, tag: str) -> None:
    assert published.manifest().resolve(version).tag == tag


def test_an_unknown_version_lists_the_tags_and_branches(published: Repository) -> None:
    with pytest.raises(RepoError) as error:
        published.manifest().resolve("9.9")
    assert str(error.value) == (
        "unknown version '9.9': ask for newest, previous, a branch (prod, testing) "
        "or a tag (v1, v2, v2-lts)"
    )


def test_previous_is_the_default_branchs_snapshot_before_its_head(
    published: Repository, make_image: Callable[..., Path]
) -> None:
    published.publish(make_image("three"), "v3-rc", "testing")
    published.branch("prod", "v3-rc")  # promoted from testing
    manifest = published.manifest()

    assert manifest.resolve("newest").tag == "v3-rc"
    assert manifest.resolve("previous").tag == "v2-lts"  # the last one published on prod
    published.branch("prod", "v1")  # rolled back to the first one
    with pytest.raises(RepoError, match="nothing was published on branch 'prod' before its head"):
        published.manifest().resolve("previous")


def test_newest_of_an_empty_repository_says_to_publish(repo: Repository) -> None:
    with pytest.raises(RepoError, match="branch 'prod' has no snapshot yet: publish to it"):
        repo.manifest().resolve("newest")


# --- tags are immutable, names unambiguous ----------------------------------------------


def test_a_tag_cannot_name_another_image(
    published: Repository, make_image: Callable[..., Path]
) -> None:
    before = published.manifest_path.read_bytes()
    files = sorted(published.snapshots_dir.iterdir())
    with pytest.raises(RepoError, match=r"tag 'v1' already names image .* tags are immutable"):
        published.publish(make_image("other"), "v1", "prod")
    with pytest.raises(RepoError, match="tag 'v1' already names image"):
        published.tag("v2", "v1")
    assert published.manifest_path.read_bytes() == before
    assert sorted(published.snapshots_dir.iterdir()) == files  # the refused image left nothing


def test_publishing_a_tag_again_with_its_image_changes_nothing(
    published: Repository, tmp_path: Path
) -> None:
    v1 = published.manifest().snapshot("v1")
    assert v1 is not None
    before = published.manifest_path.read_bytes()

    again = published.publish(tmp_path / "images" / "one.squashfs", "v1", "prod")

    assert again == v1
    assert published.manifest_path.read_bytes() == before  # not even the serial moved
    assert published.tag("v2", "v2-lts").tag == "v2-lts"
    assert published.manifest_path.read_bytes() == before


def test_a_tag_republished_on_another_branch_points_to_repo_branch(
    published: Repository, tmp_path: Path
) -> None:
    with pytest.raises(RepoError, match=r"ucvm-lab repo branch testing v1$"):
        published.publish(tmp_path / "images" / "one.squashfs", "v1", "testing")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r, i: r.publish(i, "prod", "prod"), "tag 'prod': a branch has that name"),
        (lambda r, i: r.branch("v1", "v2"), "branch 'v1': a tag has that name"),
        (lambda r, i: r.publish(i, "newest", "prod"), "newest and previous are versions"),
        (lambda r, i: r.branch("previous", "v1"), "newest and previous are versions"),
        (lambda r, i: r.publish(i, "v 3", "prod"), r"tag 'v 3': a name is \[A-Za-z0-9\]"),
        (lambda r, i: r.branch("dev", "v9"), "no tag 'v9'; tags: v1, v2, v2-lts"),
        (lambda r, i: r.publish(i, "v3", "prod", block_bytes=1000), "multiple of 4096"),
        (lambda r, i: r.publish(i, "t" * 65, "prod"), "at most 64 characters"),
        (lambda r, i: r.branch("b" * 65, "v1"), "at most 64 characters"),
    ],
)
def test_ambiguous_or_bad_names_are_refused(
    published: Repository, make_image: Callable[..., Path], call: Callable, message: str
) -> None:
    with pytest.raises(RepoError, match=message):
        call(published, make_image("three"))


def test_one_image_keeps_one_block_size(published: Repository, tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="already published as 'v1' with 65536-byte blocks"):
        published.publish(tmp_path / "images" / "one.squashfs", "v1-again", "prod", 4096)


# --- the signature ----------------------------------------------------------------------


def test_a_signed_manifest_round_trips(published: Repository, key: SigningKey) -> None:
    manifest = published.manifest()
    assert Manifest.parse(manifest.sign(key), key.public) == manifest
    assert Manifest.parse(manifest.render().encode()) == manifest  # no key: not checked


def test_one_changed_byte_in_the_body_is_refused(published: Repository) -> None:
    data = bytearray(published.manifest_path.read_bytes())
    position = data.index(b"branch testing v1") + len("branch testing v")
    data[position] = ord("2")  # testing -> v2: a well-formed but unsigned change
    published.manifest_path.write_bytes(bytes(data))

    with pytest.raises(RepoError, match="manifest signature invalid: the manifest was changed"):
        published.manifest()


def test_a_manifest_signed_by_another_key_is_refused(published: Repository, tmp_path: Path) -> None:
    stranger = SigningKey.load_or_create(tmp_path / "stranger" / "ed25519")
    data = published.manifest().sign(stranger)

    with pytest.raises(RepoError) as error:
        Manifest.parse(data, published.signing_key().public, "m")
    assert str(error.value).startswith(
        f"m: manifest signature invalid: signed by key {stranger.keyid}, expected key "
        f"{published.signing_key().keyid}"
    )
    with pytest.raises(RepoError, match="manifest signature invalid"):
        Repository(published.root, key=stranger).manifest()


def test_a_manifest_without_its_signature_line_is_refused(published: Repository) -> None:
    lines = published.manifest_path.read_bytes().splitlines(keepends=True)
    published.manifest_path.write_bytes(b"".join(lines[:-1]))

    with pytest.raises(RepoError, match=r"manifest: unsigned .* refused, and no write re-signs"):
        published.manifest()
    with pytest.raises(RepoError, match="unsigned"):  # so the advice is not to publish again
        published.tag("v1", "v1-again")


def test_init_publishes_the_public_key_and_reading_needs_only_that(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    private = tmp_path / "keys" / "ed25519"
    repo = Repository(tmp_path / "repo", key_path=private)
    repo.init("r", "prod")
    repo.publish(make_image("one"), "v1", "prod")
    key = SigningKey.load(private)
    assert (repo.root / "repo.pub").read_text() == key.public_line() + "\n"
    private.rename(tmp_path / "away")  # keys/ed25519.pub stays

    reader = Repository(repo.root, key_path=private)

    assert reader.manifest().tags() == ["v1"]
    assert reader.verify() == {"v1": []}
    with pytest.raises(RepoError, match=f"no repository key at {private}"):
        reader.tag("v1", "v1-lts")


def test_only_the_repositorys_own_key_may_write(published: Repository, tmp_path: Path) -> None:
    stranger = SigningKey.load_or_create(tmp_path / "stranger" / "ed25519")
    before = published.manifest_path.read_bytes()

    with pytest.raises(RepoError) as error:
        Repository(published.root, key=stranger).branch("testing", "v2")

    own = published.signing_key().keyid
    assert str(error.value) == (
        f"{stranger.path} (key {stranger.keyid}) is not the key of {published.root} (its "
        f"repo.pub is key {own}): set UCVM_REPO_KEY to the key that made the repository"
    )
    assert published.manifest_path.read_bytes() == before


def test_a_repository_older_than_repo_pub_gets_it_at_its_next_write(
    published: Repository,
) -> None:
    published.public_key_path.unlink()
    published.tag("v1", "v1-lts")
    assert published.public_key_path.read_text() == published.signing_key().public_line() + "\n"


BODY = (
    "ucvm-manifest 1\nrepository r\nserial 2\npublished 2026-01-02T03:04:05Z\n"
    "default-branch prod\n"
    f"snapshot v1 prod 2026-01-02T03:04:05Z {'a' * 64} 4096 65536 {'b' * 64}\n"
    "branch prod v1\n"
)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("ucvm-manifest 1", "ucvm-manifest 2", "m line 1: expected 'ucvm-manifest 1'"),
        ("serial 2", "serial two", "m line 3: serial 'two': expected an integer >= 0"),
        ("published 2026-01-02T03:04:05Z", "published yesterday", "m line 4: timestamp"),
        (" 4096 ", " 4096 ", None),
        (" 65536 ", " ", "m line 6: expected 'snapshot TAG BRANCH TIMESTAMP"),
        ("a" * 64, "A" * 64, "m line 6: IMAGE_SHA256 .* 64 lowercase hex digits"),
        ("branch prod v1", "branch prod v9", "m line 7: branch 'prod': head 'v9' is not a tag"),
        ("branch prod v1", "mirror prod", "m line 7: unknown record 'mirror'"),
        ("serial 2\n", "serial 2\r\n", "m line 3: CR found"),
        ("branch prod v1\n", "branch prod v1", "m: the last line has no line feed"),
    ],
)
def test_a_malformed_manifest_names_the_line_and_what_was_expected(
    old: str, new: str, message: str | None
) -> None:
    assert old in BODY
    data = BODY.replace(old, new).encode()
    if message is None:
        assert Manifest.parse(data, source="m").snapshots[0].image_bytes == 4096
        return
    with pytest.raises(RepoError, match=message):
        Manifest.parse(data, source="m")


# --- atomic publish ---------------------------------------------------------------------

DIE_AT = """
import os, signal, sys
from pathlib import Path
from lab.build.osrepo.repository import Repository

call, n, root, key, image = sys.argv[1], int(sys.argv[2]), *map(Path, sys.argv[3:])
real, count = getattr(os, call), 0

def die_at_n(*args, **kwargs):
    global count
    count += 1
    if count == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(os, call, die_at_n)
Repository(root, key_path=key).publish(image, "v2", "prod")
"""


@pytest.mark.parametrize(
    ("call", "n"),
    [("fsync", 1), ("replace", 1), ("fsync", 2), ("replace", 2), ("fsync", 5), ("replace", 3)],
    ids=["image-written", "image-rename", "blocks-written", "blocks-rename",
         "manifest-written", "manifest-rename"],
)  # fmt: skip
def test_a_publish_killed_at_any_point_leaves_the_previous_manifest(
    repo: Repository, make_image: Callable[..., Path], call: str, n: int
) -> None:
    repo.publish(make_image("one"), "v1", "prod")
    before = repo.manifest_path.read_bytes()
    image = make_image("two", size=2_000_000)
    assert repo.signing_key().path is not None

    child = subprocess.run(
        [sys.executable, "-c", DIE_AT, call, str(n), repo.root, repo.signing_key().path, image],
        cwd=REPO,
        capture_output=True,
        text=True,
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    assert repo.manifest_path.read_bytes() == before
    assert repo.manifest().tags() == ["v1"]
    assert repo.verify() == {"v1": []}
    repo.publish(image, "v2", "prod")  # the lock died with the child; its temp files go
    assert repo.manifest().tags() == ["v1", "v2"]
    assert repo.verify() == {"v1": [], "v2": []}
    assert temps(repo) == []


def test_a_publish_killed_after_the_manifest_rename_is_complete(
    repo: Repository, make_image: Callable[..., Path]
) -> None:
    repo.publish(make_image("one"), "v1", "prod")
    image = make_image("two")
    child = subprocess.run(
        [sys.executable, "-c", DIE_AT, "fsync", "6", repo.root, repo.signing_key().path, image],
        cwd=REPO,
        capture_output=True,
        text=True,
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    assert repo.manifest().tags() == ["v1", "v2"]
    assert repo.verify() == {"v1": [], "v2": []}


def test_a_failed_manifest_rename_keeps_the_previous_manifest(
    repo: Repository, make_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.publish(make_image("one"), "v1", "prod")
    before = repo.manifest_path.read_bytes()
    real_replace = os.replace

    def failing(source: os.PathLike, target: os.PathLike) -> None:
        if Path(target).name == "manifest":
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        repo.publish(make_image("two"), "v2", "prod")

    assert repo.manifest_path.read_bytes() == before
    assert repo.manifest().tags() == ["v1"]
    assert temps(repo) == []


def test_concurrent_publishes_both_land(repo: Repository, make_image: Callable[..., Path]) -> None:
    images = {tag: make_image(tag) for tag in ("v2", "v3", "v4")}
    code = (
        "import sys; from pathlib import Path; from lab.build.osrepo.repository import Repository; "
        "Repository(Path(sys.argv[1]), key_path=Path(sys.argv[2]))"
        ".publish(Path(sys.argv[3]), sys.argv[4], 'prod')"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, repo.root, repo.signing_key().path, image, tag],
            cwd=REPO,
        )
        for tag, image in images.items()
    ]
    assert [child.wait() for child in children] == [0, 0, 0]

    manifest = repo.manifest()
    assert sorted(manifest.tags()) == ["v2", "v3", "v4"]
    assert manifest.serial == 4
    assert manifest.branches["prod"] == manifest.tags()[-1]


# --- the server -------------------------------------------------------------------------


@pytest.fixture
def server(published: Repository, tmp_path: Path) -> Iterator[RepoServer]:
    with RepoServer(published.root, tmp_path / "run") as running:
        pid = running.pid
        assert pid is not None and alive(pid)
        yield running
    assert not Path(f"/proc/{pid}").exists(), "nginx outlived its server"


def get(
    url: str, instance: str | None = None, byte_range: str | None = None, method: str = "GET"
) -> tuple[int, bytes, dict[str, str]]:
    headers = {"X-Ucvm-Instance": instance} if instance else {}
    if byte_range:
        headers["Range"] = f"bytes={byte_range}"
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with DIRECT.open(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def test_the_server_answers_a_range_with_206_and_those_bytes(
    server: RepoServer, published: Repository
) -> None:
    snapshot = published.manifest().resolve("newest")
    image = published.image_path(snapshot).read_bytes()

    status, body, headers = get(server.url + snapshot.image_name, byte_range="70000-70999")

    assert (status, body) == (206, image[70000:71000])
    assert headers["Content-Range"] == f"bytes 70000-70999/{len(image)}"
    assert server.url == f"http://127.0.0.1:{server.port}/"


def test_the_server_serves_the_manifest_and_refuses_the_rest(
    server: RepoServer, published: Repository
) -> None:
    assert get(server.url + "manifest")[:2] == (200, published.manifest_path.read_bytes())
    assert get(server.url + "snapshots/missing.img")[0] == 404
    assert get(server.url + ".lock")[0] in (403, 404)
    assert get(server.url + "snapshots/")[0] in (403, 404)  # autoindex off
    published.snapshots_dir.joinpath(".tmp-partial.img").write_bytes(b"half")
    assert get(server.url + "snapshots/.tmp-partial.img")[0] in (403, 404)
    assert get(server.url + "manifest", method="DELETE")[0] in (403, 405)


def test_bytes_sent_per_instance_add_up_to_what_was_asked(
    server: RepoServer, published: Repository
) -> None:
    snapshot = published.manifest().resolve("newest")
    manifest_bytes = published.manifest_path.stat().st_size
    blocks_bytes = published.blocks_path(snapshot).stat().st_size
    get(server.url + "manifest", instance="guest-a")
    get(server.url + snapshot.blocks_name, instance="guest-a")
    get(server.url + snapshot.image_name, instance="guest-a", byte_range="0-65535")
    get(server.url + snapshot.image_name, instance="guest-a", byte_range="131072-135167")
    get(server.url + snapshot.image_name, instance="guest-b", byte_range="0-99")
    get(server.url + "manifest")

    a = server.bytes_sent("guest-a")

    assert (a.requests, a.body_bytes) == (4, manifest_bytes + blocks_bytes + 65536 + 4096)
    assert a.kind("manifest") == Transfer(1, manifest_bytes, a.kind("manifest").total_bytes)
    assert a.kind("blocks").body_bytes == blocks_bytes
    assert (a.kind("image").requests, a.image_body_bytes) == (2, 65536 + 4096)
    assert a.snapshots.body_bytes == blocks_bytes + 65536 + 4096
    assert a.total_bytes > a.body_bytes  # the headers too
    assert (server.bytes_sent("guest-b").requests, server.bytes_sent("guest-b").body_bytes) == (
        1,
        100,
    )
    assert server.bytes_sent("").requests == 1
    assert server.bytes_sent("nobody") == TransferTotals()
    ranges = [r.range for r in server.records() if r.instance == "guest-a"]
    assert ranges == ["", "", "bytes=0-65535", "bytes=131072-135167"]


def test_a_stopped_server_refuses_and_a_restarted_one_serves_on_its_port(
    server: RepoServer,
) -> None:
    port, first_pid = server.port, server.pid
    get(server.url + "manifest", instance="guest")
    server.stop()
    assert first_pid is not None and not Path(f"/proc/{first_pid}").exists()

    with pytest.raises(urllib.error.URLError):
        DIRECT.open(server.url + "manifest", timeout=5)

    server.start()
    assert server.port == port and server.pid != first_pid
    assert get(server.url + "manifest", instance="guest")[0] == 200
    assert server.bytes_sent("guest").requests == 2  # one log across restarts


def test_a_directory_without_a_manifest_is_not_served(tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="manifest: missing: serve a repository"):
        RepoServer(tmp_path, tmp_path / "run").start()


def test_a_taken_port_is_retried_with_another(
    published: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = [taken.getsockname()[1]]
        real_free_port = repo_service.free_port

        def taken_first(host: str) -> int:
            return ports.pop() if ports else real_free_port(host)

        monkeypatch.setattr(repo_service, "free_port", taken_first)
        with RepoServer(published.root, tmp_path / "run") as server:
            assert server.port != taken.getsockname()[1]
            assert get(server.url + "manifest")[0] == 200


def test_sweep_kills_the_server_of_a_dead_run_only(published: Repository, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    live = Run(new_run_id(), runs).hold()
    dead = Run(new_run_id(), runs).hold()
    with (
        RepoServer(published.root, live.dir / "nginx-1") as spared,
        RepoServer(published.root, dead.dir / "nginx-1") as left,
    ):
        assert dead._lock is not None
        dead._lock.close()  # the run died without cleaning up (its files stay)

        swept = sweep_servers(runs)

        assert swept == [f"nginx {left.pid} ({dead.dir / 'nginx-1'})"]
        assert left._process is not None and left._process.wait(timeout=10) == -signal.SIGKILL
        assert spared.running() and get(spared.url + "manifest")[0] == 200
    live.release()


def test_nginx_dies_with_the_process_that_started_it(published: Repository, tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from lab.services.repo import RepoServer; "
        "s = RepoServer(Path(sys.argv[1]), Path(sys.argv[2])); s.start(); "
        "print(s.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, published.root, tmp_path / "run"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert alive(pid)

    parent.kill()
    parent.wait()

    try:
        assert wait_gone(pid, 30), f"nginx {pid} outlived the process that started it"
    finally:  # whatever the verdict, nothing of the test stays running
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- the command line -------------------------------------------------------------------


def ucvm_lab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", "repo", *args],
        cwd=REPO,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """An initialised repository (publish no longer makes one) and its key."""
    env = {"UCVM_REPO": str(tmp_path / "cli-repo"), "UCVM_REPO_KEY": str(tmp_path / "k" / "key")}
    made = ucvm_lab(env, "init")
    assert made.returncode == 0, made.stderr
    return env


def test_the_repo_commands_publish_tag_branch_and_list(
    cli_env: dict[str, str], make_image: Callable[..., Path]
) -> None:
    one, two = make_image("one"), make_image("two")
    assert ucvm_lab(cli_env, "publish", str(one), "--tag", "v1", "--branch", "prod").returncode == 0
    assert ucvm_lab(cli_env, "publish", str(two), "--tag", "v2", "--branch", "prod").returncode == 0
    assert ucvm_lab(cli_env, "tag", "v2", "v2-lts").returncode == 0
    assert ucvm_lab(cli_env, "branch", "testing", "v1").returncode == 0
    again = ucvm_lab(cli_env, "publish", str(one), "--tag", "v1", "--branch", "prod")
    assert (again.returncode, again.stdout.strip()) == (
        0,
        "v1 already names this image: nothing to do",
    )

    listing = ucvm_lab(cli_env, "list", "--verify", "--json")

    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    assert data["branches"] == {"prod": "v2", "testing": "v1"}
    rows = {row["tag"]: row for row in data["snapshots"]}
    assert list(rows) == ["v1", "v2", "v2-lts"]
    assert rows["v2"]["heads"] == ["prod"] and rows["v1"]["heads"] == ["testing"]
    assert all(row["problems"] == [] for row in rows.values())
    table = ucvm_lab(cli_env, "list", "--verify")
    assert table.returncode == 0
    assert any(line.startswith("│ v2 ") and "prod" in line and "ok" in line
               for line in table.stdout.splitlines())  # fmt: skip


def test_repo_command_errors_are_one_line_naming_the_fix(
    cli_env: dict[str, str], make_image: Callable[..., Path]
) -> None:
    one = make_image("one")
    ucvm_lab(cli_env, "publish", str(one), "--tag", "v1", "--branch", "prod")

    unknown = ucvm_lab(cli_env, "branch", "testing", "v9")
    clash = ucvm_lab(cli_env, "publish", str(make_image("x")), "--tag", "v1", "--branch", "prod")

    assert unknown.returncode == 2
    assert unknown.stderr == "ucvm-lab repo branch: no tag 'v9'; tags: v1\n"
    assert clash.returncode == 2 and len(clash.stderr.splitlines()) == 1
    assert "tag 'v1' already names image" in clash.stderr and "new tag" in clash.stderr


def test_repo_list_verify_fails_on_a_changed_snapshot(
    cli_env: dict[str, str], make_image: Callable[..., Path]
) -> None:
    image = make_image("one")
    ucvm_lab(cli_env, "publish", str(image), "--tag", "v1", "--branch", "prod")
    snapshot = next(Path(cli_env["UCVM_REPO"], "snapshots").glob("*.img"))
    snapshot.unlink()  # break the hardlink: the source image stays intact
    data = bytearray(image.read_bytes())
    data[5000] ^= 1
    snapshot.write_bytes(bytes(data))

    listing = ucvm_lab(cli_env, "list", "--verify")

    assert listing.returncode == 1
    assert "FAILED" in listing.stdout
    assert f"ucvm-lab repo list: v1: {snapshot}: " in listing.stderr


def test_repo_serve_serves_until_interrupted(
    cli_env: dict[str, str], make_image: Callable[..., Path]
) -> None:
    ucvm_lab(cli_env, "publish", str(make_image("one")), "--tag", "v1", "--branch", "prod")
    serve = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "repo", "serve"],
        cwd=REPO,
        env=os.environ | cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert serve.stdout is not None
    first = serve.stdout.readline()
    url = first.split(" at ")[-1].strip()
    assert url.startswith("http://127.0.0.1:"), first + serve.stderr.read()
    manifest = Path(cli_env["UCVM_REPO"], "manifest").read_bytes()
    assert get(url + "manifest")[:2] == (200, manifest)
    port = int(url.rstrip("/").rsplit(":", 1)[1])

    serve.send_signal(signal.SIGINT)

    assert serve.wait(timeout=30) == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nginx is gone


def test_a_promotion_moves_the_branch_and_records_its_evidence_in_one_write(
    published: Repository,
) -> None:
    """`release promote`'s record: the branch and its promotion land in one signed manifest;
    the record survives a later promotion, and a promotion of no tag is refused."""
    before = published.manifest()
    verdict_sha = "ab" * 32
    promotion = published.promote("testing", "v2", verdict_sha)
    after = published.manifest()
    assert after.serial == before.serial + 1 and after.branches["testing"] == "v2"
    assert after.promotions == [promotion] and not promotion.forced
    assert after.promotions_of("v2", "testing") == [promotion]
    forced = published.promote("prod", "v1", FORCED)
    assert published.manifest().promotions == [promotion, forced] and forced.forced
    assert f"promotion prod v1 {forced.timestamp} forced" in published.manifest_path.read_text()
    with pytest.raises(RepoError, match="v9"):
        published.promote("prod", "v9", FORCED)
    with pytest.raises(RepoError, match="VERDICT_SHA256"):
        published.promote("prod", "v1", "not-a-sha")
    assert published.manifest().branches["prod"] == "v1"
