"""Bad input to `ucvm-lab solve`, `diff` and `repo`: each gets one message that names the file
and what to do, exit 2 (bad input) or 1 (a failure), and never a traceback. Real files, a real
squashfs (mksquashfs), a real read-only mount where the machine allows one."""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import cli
from lab.build.osrepo.keys import PublicKey, SigningKey
from tests.test_cli import PACKAGES

Run = Callable[..., tuple[int, str, str]]
BINARY = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "ucvm-lab"


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """``ucvm-lab ARGS`` in this process: (exit status, stdout, stderr)."""

    def call(*args: str) -> tuple[int, str, str]:
        try:
            status = cli.main(list(args))
        except SystemExit as exit_:  # argparse's refusals
            status = int(exit_.code or 0)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        return status, captured.out, captured.err

    return call


@pytest.fixture
def index(tmp_path: Path) -> Path:
    path = tmp_path / "Packages"
    path.write_text(PACKAGES)
    return path


@pytest.fixture
def good_list(tmp_path: Path) -> Path:
    path = tmp_path / "good.list"
    path.write_text("app\n")
    return path


def one_line(err: str, command: str) -> str:
    assert err.startswith(f"ucvm-lab {command}: ") and err.count("\n") == 1, err
    return err


# --- solve: the shopping list ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"app\nlib\xffx\n", ":2: byte 0xff is not UTF-8; save the list as UTF-8 text"),
        (b"# only a comment\n\n", ": no package names; a shopping list lists one package per line"),
        (b"", ": no package names; a shopping list lists one package per line"),
    ],
    ids=["not-utf8", "comments-only", "empty"],
)
def test_solve_refuses_a_shopping_list_it_cannot_use(
    run: Run, tmp_path: Path, index: Path, content: bytes, message: str
) -> None:
    listing = tmp_path / "shop.list"
    listing.write_bytes(content)

    status, _, err = run("solve", str(listing), "--index", str(index), "-o", str(tmp_path / "o"))

    assert status == 2
    assert one_line(err, "solve") == f"ucvm-lab solve: {listing}{message}\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_solve_names_a_shopping_list_that_cannot_be_read(
    run: Run, tmp_path: Path, index: Path, kind: str
) -> None:
    listing = tmp_path / "shop.list"
    if kind == "directory":
        listing.mkdir()

    status, _, err = run("solve", str(listing), "--index", str(index), "-o", str(tmp_path / "o"))

    assert status == 2
    assert one_line(err, "solve").startswith(f"ucvm-lab solve: {listing}: cannot read the ")
    assert "one package per line" in err


def test_solve_refuses_a_shopping_list_over_the_size_cap(
    run: Run, tmp_path: Path, index: Path
) -> None:
    listing = tmp_path / "big.list"
    listing.write_text("app\n" + "# padding\n" * ((8 << 20) // 10 + 1))  # just over 8 MiB

    status, _, err = run("solve", str(listing), "--index", str(index), "-o", str(tmp_path / "o"))

    assert status == 2
    assert one_line(err, "solve") == (
        f"ucvm-lab solve: {listing}: more than 8,388,608 bytes, too big for a shopping list; "
        "list one package per line (or raise the limit with UCVM_LIST_MAX_BYTES=BYTES)\n"
    )


def test_the_size_cap_is_overridden_by_its_environment_variable(
    run: Run, tmp_path: Path, index: Path, good_list: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    solve = ("solve", str(good_list), "--index", str(index), "-o", str(tmp_path / "o"))
    monkeypatch.setenv("UCVM_LIST_MAX_BYTES", "3")  # "app\n" is 4 bytes
    assert f"{good_list}: more than 3 bytes" in run(*solve)[2]
    monkeypatch.setenv("UCVM_LIST_MAX_BYTES", "4")
    assert run(*solve)[0] == 0
    monkeypatch.setenv("UCVM_LIST_MAX_BYTES", "lots")
    assert run(*solve)[1:] == (
        "",
        "ucvm-lab solve: UCVM_LIST_MAX_BYTES='lots': expected a size in bytes (>= 1)\n",
    )


def test_a_huge_line_is_echoed_cut_short(run: Run, tmp_path: Path, index: Path) -> None:
    listing = tmp_path / "huge.list"
    listing.write_text("a" * 5_000_000 + "\n")

    status, _, err = run("solve", str(listing), "--index", str(index), "-o", str(tmp_path / "o"))

    assert status == 2
    assert f"{listing}:1: package '{'a' * 80}'… (5,000,000 characters): no such package" in err
    assert len(err) < 300


# --- solve: the index -------------------------------------------------------------------------


def write_index(tmp_path: Path, kind: str) -> Path:
    """A Packages index that cannot be read, as ``kind`` says."""
    data = PACKAGES.encode()
    paths = {
        "missing": tmp_path / "Packages.missing",
        "directory": tmp_path / "Packages.d",
        "truncated-xz": tmp_path / "Packages.xz",
        "corrupt-xz": tmp_path / "Packages.xz",
        "text-named-gz": tmp_path / "Packages.gz",
        "truncated-gz": tmp_path / "Packages.gz",
    }
    path = paths[kind]
    contents = {
        "truncated-xz": lzma.compress(data)[:40],
        "corrupt-xz": b"\xfd7zXZ\x00" + bytes(100),
        "text-named-gz": data,
        "truncated-gz": gzip.compress(data)[:30],
    }
    if kind == "directory":
        path.mkdir()
    elif kind in contents:
        path.write_bytes(contents[kind])
    return path


@pytest.mark.parametrize(
    "kind",
    ["missing", "directory", "truncated-xz", "corrupt-xz", "text-named-gz", "truncated-gz"],
)
def test_solve_names_an_index_it_cannot_read(
    run: Run, tmp_path: Path, good_list: Path, kind: str
) -> None:
    path = write_index(tmp_path, kind)

    status, _, err = run("solve", str(good_list), "--index", str(path), "-o", str(tmp_path / "o"))

    assert status == 2
    assert one_line(err, "solve").startswith(f"ucvm-lab solve: {path}: ")
    assert "give a Packages index" in err


def test_a_huge_index_line_is_echoed_cut_short(run: Run, tmp_path: Path, good_list: Path) -> None:
    path = tmp_path / "Packages"
    path.write_text(PACKAGES + "\nPackage: big\nVersion: 1\n" + "x" * 5_000_000 + "\n")

    status, _, err = run("solve", str(good_list), "--index", str(path), "-o", str(tmp_path / "o"))

    assert status == 2
    assert f"line '{'x' * 80}'… (5,000,000 characters) is not a field" in err
    assert len(err) < 300


# --- solve: the output directory and the meta-package version --------------------------------


def test_solve_refuses_an_output_that_is_a_file(
    run: Run, tmp_path: Path, index: Path, good_list: Path
) -> None:
    existing = tmp_path / "results"
    existing.write_text("not a directory")

    status, _, err = run("solve", str(good_list), "--index", str(index), "-o", str(existing))
    below = existing / "sub"
    status_below, _, err_below = run(
        "solve", str(good_list), "--index", str(index), "-o", str(below)
    )

    assert status == 2
    assert one_line(err, "solve") == (
        f"ucvm-lab solve: {existing}: exists and is not a directory; give -o a directory "
        "(made if missing)\n"
    )
    assert status_below == 2
    assert one_line(err_below, "solve").startswith(f"ucvm-lab solve: {below}: Not a directory")


@pytest.mark.parametrize(
    "version", ["1.0\nEssential: yes", "../../evil", "1.0/../../x", "beta", "1.0 rc", "", "1:"]
)
def test_solve_refuses_a_meta_package_version_that_is_not_debians(
    run: Run, tmp_path: Path, index: Path, good_list: Path, version: str
) -> None:
    out = tmp_path / "o"

    status, _, err = run(
        "solve", str(good_list), "--index", str(index), "-o", str(out), "--version", version
    )

    assert status == 2
    assert "argument --version: " in err and "a Debian version is [epoch:]upstream" in err
    assert not out.exists() and not list(tmp_path.rglob("*.deb"))


def test_solve_takes_a_debian_version_with_epoch_and_revision(
    run: Run, tmp_path: Path, index: Path, good_list: Path
) -> None:
    status, out, err = run(
        "solve", str(good_list), "--index", str(index), "-o", str(tmp_path / "o"),
        "--version", "2:1.4~rc1-3+b1",
    )  # fmt: skip

    assert status == 0, out + err
    assert (tmp_path / "o" / "cernvm-system_2:1.4~rc1-3+b1_all.deb").is_file()


# --- diff ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"packages": [\n', ":2: not JSON (Expecting value)"),
        (b"[]", ': no "packages" list'),
        (b'{"packages": {}}', ': no "packages" list'),
        (b'{"packages": [1]}', ": packages[0] is '1'; expected an object of the strings name, "),
        (b'{"packages": [{"name": "a"}]}', ': packages[0] is \'{"name": "a"}\''),
        (b"\xff\xfe{", ": not UTF-8 text"),
        (None, ": cannot read it (No such file or directory)"),
    ],
    ids=[
        "bad-json",
        "a-list",
        "packages-not-a-list",
        "entry-not-object",
        "entry-fields",
        "not-utf8",
        "missing",
    ],
)
def test_diff_names_a_closed_list_it_cannot_read(
    run: Run, tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "closed-list.json"
    if content is not None:
        path.write_bytes(content)

    status, _, err = run("diff", str(path), str(path))

    assert status == 2
    assert one_line(err, "diff").startswith(f"ucvm-lab diff: {path}{message}")
    assert "expected" in err


# --- repo -----------------------------------------------------------------------------------------


@pytest.fixture
def repo_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """UCVM_REPO_KEY for this test; returns the repository's path (not made)."""
    monkeypatch.setenv("UCVM_REPO_KEY", str(tmp_path / "keys" / "ed25519"))
    monkeypatch.delenv("UCVM_REPO", raising=False)
    return tmp_path / "repo"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("NAME=test\n")
    (tree / "data").write_bytes(os.urandom(200_000))
    path = tmp_path / "os.squashfs"
    subprocess.run(["mksquashfs", tree, path, "-noappend", "-quiet", "-no-progress"], check=True)
    return path


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A real read-only file system (a tmpfs mounted ro); skipped where mounting is not allowed."""
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "ucvm-test", str(mount)], capture_output=True
    )
    if made.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_repo_init_on_a_read_only_file_system_names_the_path(
    run: Run, repo_env: Path, read_only_dir: Path
) -> None:
    status, _, err = run("repo", "init", "--repo", str(read_only_dir / "repo"))

    assert status == 1
    assert one_line(err, "repo init").startswith(
        f"ucvm-lab repo init: {read_only_dir / 'repo'}: Read-only file system; "
    )
    assert "directories you can write" in err


def test_repo_init_below_a_file_names_the_path(run: Run, repo_env: Path, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file")

    status, _, err = run("repo", "init", "--repo", str(tmp_path / "plain" / "repo"))

    assert status == 1
    assert one_line(err, "repo init").startswith(
        f"ucvm-lab repo init: {tmp_path / 'plain' / 'repo'}: Not a directory; "
    )


def test_a_repo_key_that_is_a_directory_is_named(
    run: Run, repo_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "keydir").mkdir()
    monkeypatch.setenv("UCVM_REPO_KEY", str(tmp_path / "keydir"))

    status, _, err = run("repo", "init", "--repo", str(repo_env))

    assert status == 2
    assert one_line(err, "repo init") == (
        f"ucvm-lab repo init: {tmp_path / 'keydir'}: cannot read the repository key (Is a "
        "directory): set UCVM_REPO_KEY to the private key file (PEM) that signs the repository\n"
    )


def test_publish_needs_a_repository_that_init_made(
    run: Run, repo_env: Path, image: Path, tmp_path: Path
) -> None:
    status, _, err = run(
        "repo", "publish", str(image), "--tag", "v1", "--branch", "prod", "--repo", str(repo_env)
    )

    assert status == 2
    assert f"not a repository yet: ucvm-lab repo init --repo {repo_env}" in one_line(
        err, "repo publish"
    )
    assert not (repo_env / "manifest").exists()
    assert not (tmp_path / "keys").exists()  # and no key was made


def test_publish_with_a_mistyped_key_makes_no_new_key(
    run: Run, repo_env: Path, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("repo", "init", "--repo", str(repo_env))[0] == 0
    before = (repo_env / "manifest").read_bytes()
    monkeypatch.setenv("UCVM_REPO_KEY", str(tmp_path / "keys" / "ed25591"))

    status, _, err = run(
        "repo", "publish", str(image), "--tag", "v1", "--branch", "prod", "--repo", str(repo_env)
    )

    assert status == 2
    assert f"no repository key at {tmp_path / 'keys' / 'ed25591'}" in one_line(err, "repo publish")
    assert not (tmp_path / "keys" / "ed25591").exists()
    assert (repo_env / "manifest").read_bytes() == before


def test_publish_with_another_repositorys_key_is_refused_with_both_fingerprints(
    run: Run, repo_env: Path, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("repo", "init", "--repo", str(repo_env))[0] == 0
    own = PublicKey.load(repo_env / "repo.pub")
    other = SigningKey.load_or_create(tmp_path / "other" / "ed25519")
    monkeypatch.setenv("UCVM_REPO_KEY", str(other.path))
    before = (repo_env / "manifest").read_bytes()

    status, _, err = run(
        "repo", "publish", str(image), "--tag", "v1", "--branch", "prod", "--repo", str(repo_env)
    )

    assert status == 2
    assert one_line(err, "repo publish") == (
        f"ucvm-lab repo publish: {other.path} (key {other.keyid}) is not the key of {repo_env} "
        f"(its repo.pub is key {own.keyid}): set UCVM_REPO_KEY to the key that made the "
        "repository\n"
    )
    assert (repo_env / "manifest").read_bytes() == before


def test_list_and_verify_need_only_the_public_key(
    run: Run, repo_env: Path, image: Path, tmp_path: Path
) -> None:
    assert run("repo", "init", "--repo", str(repo_env))[0] == 0
    publish = ("repo", "publish", str(image), "--tag", "v1", "--branch", "prod")
    assert run(*publish, "--repo", str(repo_env))[0] == 0
    private = tmp_path / "keys" / "ed25519"
    private.rename(tmp_path / "elsewhere")  # only ed25519.pub stays

    status, out, err = run("repo", "list", "--verify", "--repo", str(repo_env))

    assert (status, err) == (0, "")
    assert "v1" in out and "ok" in out
    status, _, err = run(*publish[:4], "v2", *publish[5:], "--repo", str(repo_env))
    assert status == 2 and f"no repository key at {private}" in err  # writing needs it


def test_an_unsigned_manifest_is_refused_with_advice_that_works(
    run: Run, repo_env: Path, image: Path
) -> None:
    assert run("repo", "init", "--repo", str(repo_env))[0] == 0
    manifest = repo_env / "manifest"
    manifest.write_bytes(b"".join(manifest.read_bytes().splitlines(keepends=True)[:-1]))

    status, _, err = run("repo", "list", "--repo", str(repo_env))
    publish = run(
        "repo", "publish", str(image), "--tag", "v1", "--branch", "prod", "--repo", str(repo_env)
    )

    assert status == 2
    assert "unsigned" in one_line(err, "repo list") and "ucvm-lab repo init --repo NEW" in err
    assert "publish or tag again" not in err
    assert publish[0] == 2 and "unsigned" in publish[2]  # what the old advice led to


def test_a_tag_longer_than_64_characters_is_refused(run: Run, repo_env: Path, image: Path) -> None:
    assert run("repo", "init", "--repo", str(repo_env))[0] == 0
    publish = ("repo", "publish", str(image), "--branch", "prod", "--repo", str(repo_env))

    status, _, err = run(*publish, "--tag", "t" * 65)

    assert status == 2
    assert one_line(err, "repo publish") == (
        f"ucvm-lab repo publish: tag '{'t' * 65}': a name is [A-Za-z0-9][A-Za-z0-9._-]*, at most "
        "64 characters\n"
    )
    assert run(*publish, "--tag", "t" * 64)[0] == 0


def test_a_file_that_only_starts_like_a_squashfs_is_refused(
    run: Run, repo_env: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "fake.squashfs"
    fake.write_bytes(b"hsqs" + bytes(4000))
    assert run("repo", "init", "--repo", str(repo_env))[0] == 0

    status, _, err = run(
        "repo", "publish", str(fake), "--tag", "v1", "--branch", "prod", "--repo", str(repo_env)
    )

    assert status == 2
    assert one_line(err, "repo publish") == (
        f"ucvm-lab repo publish: {fake}: not a squashfs image (squashfs version 0.0; expected "
        "4.0): make it with mksquashfs\n"
    )


def test_the_installed_command_prints_no_traceback(tmp_path: Path, index: Path) -> None:
    """The same path as a user's shell: the console script, a shopping list that is not UTF-8."""
    listing = tmp_path / "shop.list"
    listing.write_bytes(b"\xff\n")

    result = subprocess.run(
        [BINARY, "solve", listing, "--index", index, "-o", tmp_path / "o"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr == (
        f"ucvm-lab solve: {listing}:1: byte 0xff is not UTF-8; save the list as UTF-8 text\n"
    )
