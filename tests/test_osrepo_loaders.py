"""Boot loader versions in the OS repository (docs/os-on-demand.md, "Manifest"): the `loader`
records and the snapshot line's LOADER_VERSION, publish_loader and publish(loader=), their
refusals, `repo list --verify`, the `repo publish-loader` / `repo publish --loader` commands,
and the guest's awk reading a manifest that has them. Real squashfs images (mksquashfs)."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import cli
from lab.build.osrepo.keys import RepoError, SigningKey
from lab.build.osrepo.manifest import Loader, Manifest
from lab.build.osrepo.repository import Repository
from tests.guest_shell import Guest

STAMP = "2026-01-02T03:04:05Z"
KERNEL_SHA, INITRD_SHA, IMAGE_SHA, BLOCKS_SHA = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def kernel_bytes(payload: bytes) -> bytes:
    """What passes for a bzImage: the x86 boot protocol's `HdrS` at 0x202."""
    head = bytearray(os.urandom(0x400))
    head[0x202:0x206] = b"HdrS"
    return bytes(head) + payload


def initrd_bytes(payload: bytes) -> bytes:
    """An xz'd newc cpio's start, as pack_initramfs writes it."""
    return lzma.compress(b"070701" + payload + os.urandom(2000), check=lzma.CHECK_CRC32)


@pytest.fixture
def parts(tmp_path: Path) -> Callable[[str], tuple[Path, Path]]:
    """A loader's (kernel, initrd) files; ``name`` makes them differ."""

    def make(name: str) -> tuple[Path, Path]:
        folder = tmp_path / "loaders" / name
        folder.mkdir(parents=True)
        (folder / "vmlinuz").write_bytes(kernel_bytes(name.encode()))
        (folder / "initrd.img").write_bytes(initrd_bytes(name.encode()))
        return folder / "vmlinuz", folder / "initrd.img"

    return make


@pytest.fixture
def image(tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        tree = tmp_path / "trees" / name
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "os-release").write_text(f"NAME={name}\n")
        (tree / "data").write_bytes(os.urandom(100_000))
        path = tmp_path / "images" / f"{name}.squashfs"
        path.parent.mkdir(exist_ok=True)
        subprocess.run(
            ["mksquashfs", tree, path, "-noappend", "-quiet", "-no-progress"], check=True
        )
        return path

    return make


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    key = SigningKey.load_or_create(tmp_path / "keys" / "ed25519")
    repository = Repository(tmp_path / "repo", key=key)
    repository.init("test", default_branch="prod")
    return repository


@pytest.fixture
def with_loaders(
    repo: Repository, parts: Callable[[str], tuple[Path, Path]], image: Callable[[str], Path]
) -> Repository:
    """Loaders 0.1 and 0.2; v1 (no loader named), v2 wanting 0.1 on prod, v3 wanting 0.2 on
    devel."""
    repo.publish_loader("0.1", *parts("0.1"), timestamp=STAMP)
    repo.publish_loader("0.2", *parts("0.2"))
    repo.publish(image("one"), "v1", "prod")
    repo.publish(image("two"), "v2", "prod", loader="0.1")
    repo.publish(image("three"), "v3", "devel", loader="0.2")
    return repo


def listing(repo: Repository) -> list[Path]:
    return sorted(repo.loaders_dir.iterdir())


# --- publishing ---------------------------------------------------------------------------


def test_loaders_round_trip_and_are_served_content_addressed(
    with_loaders: Repository, tmp_path: Path
) -> None:
    manifest = with_loaders.manifest()

    assert manifest.loader_versions() == ["0.1", "0.2"]
    assert [s.loader for s in manifest.snapshots] == [None, "0.1", "0.2"]
    first = manifest.loader("0.1")
    assert first is not None and first.timestamp == STAMP
    for loader in manifest.loaders:
        source = tmp_path / "loaders" / loader.version
        for name, part in ((loader.kernel_name, "vmlinuz"), (loader.initrd_name, "initrd.img")):
            served = (with_loaders.root / name).read_bytes()
            assert served == (source / part).read_bytes()
            assert name == f"loaders/{hashlib.sha256(served).hexdigest()}.{name.split('.')[-1]}"
        assert loader.kernel_bytes == (source / "vmlinuz").stat().st_size
        assert loader.initrd_bytes == (source / "initrd.img").stat().st_size
    key = with_loaders.signing_key()
    assert Manifest.parse(manifest.sign(key), key.public) == manifest
    assert with_loaders.verify() == {
        "v1": [], "v2": [], "v3": [], "loader 0.1": [], "loader 0.2": [],
    }  # fmt: skip
    assert with_loaders.tag("v3", "v3-rc").loader == "0.2"  # a further tag wants the same


def test_the_manifest_text_puts_loaders_between_snapshots_and_branches(
    with_loaders: Repository,
) -> None:
    lines = with_loaders.manifest_path.read_text().splitlines()
    manifest = with_loaders.manifest()
    v1, v2, _ = manifest.snapshots
    first = manifest.loaders[0]

    assert [line.split(" ")[0] for line in lines[5:]] == [
        "snapshot", "snapshot", "snapshot", "loader", "loader", "branch", "branch", "signature",
    ]  # fmt: skip
    assert len(lines[5].split(" ")) == 8 and lines[5].endswith(v1.blocks_sha256)
    assert lines[6].split(" ")[8:] == ["0.1"] and lines[6].startswith(
        f"snapshot v2 prod {v2.timestamp}"
    )
    assert lines[8] == (
        f"loader 0.1 {STAMP} {first.kernel_sha256} {first.kernel_bytes} {first.initrd_sha256} "
        f"{first.initrd_bytes}"
    )
    assert lines[0] == "ucvm-manifest 1"


def test_publishing_a_loader_again_with_its_files_changes_nothing(
    with_loaders: Repository, tmp_path: Path
) -> None:
    before = with_loaders.manifest_path.read_bytes()
    folder = tmp_path / "loaders" / "0.2"

    again = with_loaders.publish_loader("0.2", folder / "vmlinuz", folder / "initrd.img")

    assert again == with_loaders.manifest().loader("0.2")
    assert with_loaders.manifest_path.read_bytes() == before  # not even the serial moved


def test_a_loader_version_cannot_change_its_files(
    with_loaders: Repository, parts: Callable[[str], tuple[Path, Path]]
) -> None:
    before, files = with_loaders.manifest_path.read_bytes(), listing(with_loaders)
    old = with_loaders.manifest().loader("0.2")
    kernel, initrd = parts("other")
    assert old is not None

    with pytest.raises(RepoError) as error:
        with_loaders.publish_loader("0.2", kernel, initrd)

    new_kernel = hashlib.sha256(kernel.read_bytes()).hexdigest()
    new_initrd = hashlib.sha256(initrd.read_bytes()).hexdigest()
    assert str(error.value) == (
        f"loader '0.2' already has kernel {old.kernel_sha256[:16]}… and initrd "
        f"{old.initrd_sha256[:16]}…, not {new_kernel[:16]}… and {new_initrd[:16]}…: loader "
        "versions are immutable; publish under a new version"
    )
    assert with_loaders.manifest_path.read_bytes() == before
    assert listing(with_loaders) == files  # the refused copies left nothing


def test_a_snapshot_cannot_want_a_loader_that_is_not_published(
    with_loaders: Repository, image: Callable[[str], Path]
) -> None:
    before = with_loaders.manifest_path.read_bytes()
    with pytest.raises(RepoError) as error:
        with_loaders.publish(image("four"), "v4", "prod", loader="0.3")
    assert str(error.value) == (
        "loader '0.3' is not published (loaders: 0.1, 0.2): publish it first: ucvm-lab repo "
        "publish-loader 0.3 --kernel KERNEL --initrd INITRD"
    )
    assert with_loaders.manifest_path.read_bytes() == before


def test_a_tag_cannot_change_the_loader_it_wants(with_loaders: Repository, tmp_path: Path) -> None:
    two = tmp_path / "images" / "two.squashfs"
    with pytest.raises(RepoError, match=r"^tag 'v2' was published with loader '0.1', not '0.2': "):
        with_loaders.publish(two, "v2", "prod", loader="0.2")
    with pytest.raises(RepoError, match=r"with loader .0\.1., not none: tags are immutable"):
        with_loaders.publish(two, "v2", "prod")
    assert with_loaders.publish(two, "v2", "prod", loader="0.1").loader == "0.1"  # a no-op


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("0 2", r"^loader version '0 2': a name is \[A-Za-z0-9\]"),
        ("newest", "^loader version 'newest': newest and previous are versions, not names$"),
        ("v" * 65, "at most 64 characters"),
    ],
)
def test_a_bad_loader_version_is_refused(
    repo: Repository, parts: Callable[[str], tuple[Path, Path]], version: str, message: str
) -> None:
    with pytest.raises(RepoError, match=message):
        repo.publish_loader(version, *parts("x"))
    assert repo.manifest().loaders == []


def test_loader_files_that_are_not_a_kernel_and_an_initramfs_are_refused(
    repo: Repository, parts: Callable[[str], tuple[Path, Path]], tmp_path: Path
) -> None:
    kernel, initrd = parts("x")
    empty, text = tmp_path / "empty", tmp_path / "notes.txt"
    empty.write_bytes(b"")
    text.write_text("hello\n" * 200)
    cases = [
        ((initrd, kernel), f"{initrd}: no 'HdrS' boot header at 0x202: not a Linux bzImage; "
                           "give --kernel the loader's kernel"),
        ((kernel, text), f"{text}: not an initramfs (expected a bzip2, cpio, gzip, lz4, lzo, xz, "
                         "zstd archive, found b'hello\\n'); give --initrd the loader's initrd"),
        ((empty, initrd), f"{empty}: the kernel is empty"),
        ((tmp_path / "nowhere", initrd), f"{tmp_path / 'nowhere'}: cannot read the kernel (No "
                                         "such file or directory)"),
    ]  # fmt: skip
    for (given_kernel, given_initrd), message in cases:
        with pytest.raises(RepoError) as error:
            repo.publish_loader("0.1", given_kernel, given_initrd)
        assert str(error.value) == message
    assert repo.manifest().loaders == [] and not repo.loaders_dir.exists()


def test_verify_re_hashes_the_loader_files(with_loaders: Repository) -> None:
    loader = with_loaders.manifest().loader("0.1")
    assert loader is not None
    initrd = with_loaders.root / loader.initrd_name
    initrd.write_bytes(initrd.read_bytes()[:-1] + b"\0")  # one byte flipped, same size
    (with_loaders.root / loader.kernel_name).unlink()

    problems = with_loaders.verify()

    kernel_problem, initrd_problem = problems["loader 0.1"]
    assert kernel_problem == f"{with_loaders.root / loader.kernel_name}: No such file or directory"
    assert initrd_problem.startswith(f"{initrd}: {loader.initrd_bytes} bytes with sha256 ")
    assert initrd_problem.endswith(f"not the manifest's {loader.initrd_bytes} bytes")
    assert problems["loader 0.2"] == [] and problems["v1"] == []


# --- parsing ------------------------------------------------------------------------------

LOADER = f"loader 0.2 {STAMP} {KERNEL_SHA} 8247232 {INITRD_SHA} 2655676"
SNAPSHOT = f"snapshot v1 prod {STAMP} {IMAGE_SHA} 4096 65536 {BLOCKS_SHA}"
BODY = (
    f"ucvm-manifest 1\nrepository r\nserial 2\npublished {STAMP}\ndefault-branch prod\n"
    f"{SNAPSHOT} 0.2\n{LOADER}\nbranch prod v1\n"
)


def test_a_body_with_a_loader_parses() -> None:
    manifest = Manifest.parse(BODY.encode(), source="m")
    assert manifest.snapshots[0].loader == "0.2"
    assert manifest.loaders == [Loader("0.2", STAMP, KERNEL_SHA, 8247232, INITRD_SHA, 2655676)]
    assert manifest.render() == BODY


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (LOADER, LOADER + " extra", "m line 7: expected 'loader VERSION TIMESTAMP KERNEL_SHA256"),
        (LOADER, LOADER.replace(" 2655676", ""), "m line 7: expected 'loader VERSION"),
        (KERNEL_SHA, KERNEL_SHA.upper(), "m line 7: KERNEL_SHA256 .* 64 lowercase hex digits"),
        (" 2655676", " 0", r"m line 7: INITRD_BYTES '0': expected an integer >= 1"),
        ("loader 0.2 ", "loader 0/2 ", "m line 7: loader version '0/2': a name is"),
        (f"{STAMP} {KERNEL_SHA}", f"today {KERNEL_SHA}", "m line 7: timestamp 'today'"),
        (" 0.2\n", " 0.2 x\n", "m line 6: expected 'snapshot TAG .* BLOCKS_SHA256 "
                               r"\[LOADER_VERSION\]'"),
        (" 0.2\n", " 0/2\n", "m line 6: LOADER_VERSION '0/2': a name is"),
        (" 0.2\n", " 0.3\n", "m line 6: tag 'v1' names loader '0.3', which no loader line lists "
                             r"\(loaders: 0.2\): publish that loader first"),
        (LOADER, f"{LOADER}\n{LOADER}", "m line 8: loader '0.2' is listed twice"),
        (f"{LOADER}\nbranch prod v1", f"branch prod v1\n{LOADER}",
         "m line 8: loader lines come before the branch lines"),
        (LOADER, f"{LOADER}\n{SNAPSHOT.replace('v1', 'v2')}",
         "m line 8: snapshot lines come before the loader lines"),
        ("branch prod v1", "mirror prod", "m line 8: unknown record 'mirror': expected snapshot, "
                                          "loader, branch, promotion, signature"),
    ],
)  # fmt: skip
def test_a_malformed_loader_record_names_the_line_and_what_was_expected(
    old: str, new: str, message: str
) -> None:
    assert old in BODY
    with pytest.raises(RepoError, match=message):
        Manifest.parse(BODY.replace(old, new, 1).encode(), source="m")


def test_a_snapshot_line_without_a_loader_still_parses() -> None:
    body = BODY.replace(f"{SNAPSHOT} 0.2\n", f"{SNAPSHOT}\n")
    assert Manifest.parse(body.encode(), source="m").snapshots[0].loader is None


def test_the_guests_awk_reads_the_loader_as_the_ninth_word(
    with_loaders: Repository, tmp_path: Path
) -> None:
    """lab/build/initramfs/functions' resolve_version skips the loader lines and returns the
    snapshot line, whose 9th word (if any) is the loader the snapshot wants."""
    guest = Guest(tmp_path / "guest")
    guest.manifest = with_loaders.manifest_path.read_text()
    manifest = with_loaders.manifest()
    for want, tag, loader in (("newest", "v2", "0.1"), ("devel", "v3", "0.2"), ("v1", "v1", "-")):
        out = guest.prints(
            f'set -- $(resolve_version "{want}" <"$FAKE_MANIFEST"); echo "$2 $5 ${{9:--}} $#"'
        )
        snapshot = manifest.snapshot(tag)
        assert snapshot is not None
        words = 8 if loader == "-" else 9
        assert out.strip() == f"{tag} {snapshot.image_sha256} {loader} {words}"


# --- the command line ---------------------------------------------------------------------


def ucvm_lab(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(args))
    except SystemExit as exit_:  # argparse's refusals
        status = int(exit_.code or 0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err


@pytest.fixture
def repo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("UCVM_REPO_KEY", str(tmp_path / "keys" / "ed25519"))
    monkeypatch.delenv("UCVM_REPO", raising=False)
    return tmp_path / "repo"


def test_the_commands_publish_and_list_loaders(
    capsys: pytest.CaptureFixture[str],
    repo_dir: Path,
    parts: Callable[[str], tuple[Path, Path]],
    image: Callable[[str], Path],
) -> None:
    at = ("--repo", str(repo_dir))
    kernel, initrd = parts("0.2")
    assert ucvm_lab(capsys, "repo", "init", *at)[0] == 0
    publish_loader = (
        "repo",
        "publish-loader",
        "0.2",
        "--kernel",
        str(kernel),
        "--initrd",
        str(initrd),
    )

    status, out, err = ucvm_lab(capsys, *publish_loader, *at)
    assert (status, err) == (0, "")
    kernel_sha = hashlib.sha256(kernel.read_bytes()).hexdigest()
    assert out.startswith(
        f"published loader 0.2: kernel {kernel.stat().st_size:,} bytes, sha256 {kernel_sha}; initrd"
    )
    assert ucvm_lab(capsys, *publish_loader, *at)[1] == (
        "loader 0.2 already has this kernel and initrd: nothing to do\n"
    )
    status, out, err = ucvm_lab(
        capsys, "repo", "publish", str(image("one")), "--tag", "v1", "--branch", "prod",
        "--loader", "0.2", *at,
    )  # fmt: skip
    assert (status, err) == (0, "") and out.rstrip().endswith(", loader 0.2")

    status, out, err = ucvm_lab(capsys, "repo", "list", "--verify", "--json", *at)
    listed = json.loads(out)
    assert (status, err) == (0, "")
    assert listed["snapshots"][0]["loader"] == "0.2"
    [loader] = listed["loaders"]
    assert (loader["version"], loader["kernel"], loader["problems"]) == (
        "0.2", f"loaders/{kernel_sha}.kernel", [],
    )  # fmt: skip
    status, out, _ = ucvm_lab(capsys, "repo", "list", "--verify", *at)
    assert status == 0 and "boot loader versions" in out and kernel_sha[:16] in out


def test_the_commands_refuse_bad_loaders_in_one_line(
    capsys: pytest.CaptureFixture[str],
    repo_dir: Path,
    parts: Callable[[str], tuple[Path, Path]],
    image: Callable[[str], Path],
) -> None:
    at = ("--repo", str(repo_dir))
    kernel, initrd = parts("0.1")
    assert ucvm_lab(capsys, "repo", "init", *at)[0] == 0
    before = (repo_dir / "manifest").read_bytes()

    status, _, err = ucvm_lab(
        capsys, "repo", "publish", str(image("one")), "--tag", "v1", "--branch", "prod",
        "--loader", "0.2", *at,
    )  # fmt: skip
    assert status == 2
    assert err == (
        "ucvm-lab repo publish: loader '0.2' is not published (loaders: none): publish it "
        "first: ucvm-lab repo publish-loader 0.2 --kernel KERNEL --initrd INITRD\n"
    )
    swapped = ("repo", "publish-loader", "0.1", "--kernel", str(initrd), "--initrd", str(kernel))
    status, _, err = ucvm_lab(capsys, *swapped, *at)
    assert status == 2
    assert err == (
        f"ucvm-lab repo publish-loader: {initrd}: no 'HdrS' boot header at 0x202: not a Linux "
        "bzImage; give --kernel the loader's kernel\n"
    )
    status, _, err = ucvm_lab(capsys, "repo", "publish-loader", "0.1", "--kernel", str(kernel), *at)
    assert status == 2 and "the following arguments are required: --initrd" in err
    assert (repo_dir / "manifest").read_bytes() == before
