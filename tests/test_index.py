"""Tests of the repository index readers (lab.packages.debian, lab.packages.rpm): a hand-written
Debian fixture, the pinned Debian 12 corpus read in place, malformed stanzas, a real RPM
repository built here with rpmbuild and createrepo_c, rpm's version order, and the
artifact-store cache."""

from __future__ import annotations

import dataclasses
import gzip
import lzma
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import lab.packages.debian as debian_module
from lab.artifacts import ArtifactStore
from lab.packages import index
from lab.packages.debian import load_cached, read_debian, version_problem, write_packages
from lab.packages.index import IndexFormatError
from lab.packages.model import Package, Relation, Repository
from lab.packages.rpm import read_rpm_primary, rpm_compare, rpmvercmp

DATA = Path(__file__).parent / "data" / "index"
FIXTURE = [DATA / "main.Packages", DATA / "updates.Packages"]


def content(package: Package) -> tuple[Any, ...]:
    """Every field but where the package was read from (Package.__eq__ compares keys only)."""
    return tuple(
        getattr(package, item.name)
        for item in dataclasses.fields(Package)
        if item.name not in ("origin", "line")
    )


def by_key(repository: Repository) -> dict[tuple[str, str, str], Package]:
    return {package.key: package for package in repository.packages}


# --- the hand-written fixture --------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_repo() -> Repository:
    return read_debian(FIXTURE)


def test_fixture_keeps_amd64_and_all_and_merges_duplicates(fixture_repo: Repository) -> None:
    assert sorted(f"{name} {version} {arch}" for name, version, arch in by_key(fixture_repo)) == [
        "base-files 12.4+deb12u5 amd64",
        "lab-mta 3.7.11-0+deb12u1 amd64",
        "lab-tool 1:2.0~rc1-3 all",
        "libc6 2.36-9+deb12u14 amd64",  # only in updates
        "libc6 2.36-9+deb12u7 amd64",  # in main and in updates: once, the i386 one dropped
        "libgcc-s1 12.2.0-14 amd64",
        "python3 3.11.2-1+b1 amd64",
    ]
    libc6 = fixture_repo.by_name["libc6"]
    assert [package.version for package in libc6] == ["2.36-9+deb12u14", "2.36-9+deb12u7"]
    assert libc6[1].origin == str(FIXTURE[0])  # the first file that has it
    assert libc6[0].origin == str(FIXTURE[1]) and libc6[0].line == 14


def test_fixture_relations(fixture_repo: Repository) -> None:
    tool = fixture_repo.by_name["lab-tool"][0]
    assert tool.depends == (
        (Relation("python3", ">=", "3.11~", "any"),),
        (Relation("libgcc-s1", ">>", "4.0"), Relation("libgcc1")),
        (Relation("mail-transport-agent"),),
        (Relation("gcc", arch="arm64"),),
    )
    assert tool.conflicts == (Relation("lab-tool-old", "<<", "1:1.0"),)
    libc6 = fixture_repo.by_name["libc6"][0]
    assert libc6.breaks == (
        Relation("hurd", "<<", "1:0.9.git20220301-2"),
        Relation("nscd", "<<", "2.36"),
    )
    gcc = fixture_repo.by_name["libgcc-s1"][0]
    assert gcc.pre_depends == ((Relation("libc6", ">=", "2.14"),),)
    assert gcc.requirements() == (
        (Relation("libc6", ">=", "2.14"),),
        (Relation("gcc-12-base", "=", "12.2.0-14"),),
    )
    python3 = fixture_repo.by_name["python3"][0]
    assert python3.provides == (
        Relation("python3-profiler"),
        Relation("python3-supported-max", "=", "3.11"),
        Relation("python3-supported-min", "=", "3.11"),
    )


def test_fixture_scalar_fields(fixture_repo: Repository) -> None:
    base = fixture_repo.by_name["base-files"][0]
    assert base.essential and base.priority == "required" and base.multi_arch == "foreign"
    assert [p.name for p in fixture_repo.packages if p.essential] == ["base-files"]
    assert fixture_repo.by_name["python3"][0].multi_arch == "allowed"
    assert fixture_repo.by_name["lab-mta"][0].multi_arch == ""
    gcc = fixture_repo.by_name["libgcc-s1"][0]
    assert gcc.filename == "pool/main/g/gcc-12/libgcc-s1_12.2.0-14_amd64.deb"
    assert gcc.size == 49892
    assert gcc.sha256.startswith("f3d1d48c") and len(gcc.sha256) == 64
    assert (gcc.origin, gcc.line) == (str(FIXTURE[0]), 24)
    assert gcc.extra == {"Source": "gcc-12", "Protected": "yes", "Section": "libs"}
    tool = fixture_repo.by_name["lab-tool"][0]
    assert tool.extra["Suggests"] == "postfix"  # not modelled, but kept
    assert tool.extra["Description"] == (
        "a tool for the lab\n It has a long description\n .\n over several lines."
    )


def test_fixture_satisfaction(fixture_repo: Repository) -> None:
    def satisfiers(relation: Relation) -> list[str]:
        return [str(package) for package in fixture_repo.satisfiers(relation)]

    assert satisfiers(Relation("python3", ">=", "3.11~", "any")) == ["python3 3.11.2-1+b1 (amd64)"]
    assert satisfiers(Relation("libc6", arch="any")) == []  # Multi-Arch: same
    assert satisfiers(Relation("gcc", arch="arm64")) == []
    assert satisfiers(Relation("libgcc1", ">=", "1:12")) == ["libgcc-s1 12.2.0-14 (amd64)"]
    assert satisfiers(Relation("python3-profiler", ">=", "1")) == []  # unversioned Provides
    mta = fixture_repo.by_name["lab-mta"][0]
    assert fixture_repo.conflicting(mta) == set()  # its own Provides is no conflict


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_compressed_fixture_reads_the_same(
    suffix: str, tmp_path: Path, fixture_repo: Repository
) -> None:
    compressed = []
    for path in FIXTURE:
        target = tmp_path / (path.name + suffix)
        opener = gzip.open if suffix == ".gz" else lzma.open
        with opener(target, "wb") as stream:
            stream.write(path.read_bytes())
        compressed.append(target)
    repository = read_debian(compressed)
    assert [content(p) for p in repository.packages] == [content(p) for p in fixture_repo.packages]
    assert repository.by_name["libc6"][0].origin == str(compressed[1])


def test_other_architecture(fixture_repo: Repository) -> None:
    i386 = read_debian(FIXTURE, arch="i386")
    assert sorted(str(package) for package in i386.packages) == [
        "lab-tool 1:2.0~rc1-3 (all)",
        "libc6 2.36-9+deb12u7 (i386)",
    ]


# --- writing -------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path: Path, fixture_repo: Repository) -> None:
    written = tmp_path / "Packages"
    write_packages(fixture_repo.packages, written)
    again = read_debian([written])
    assert [content(p) for p in again.packages] == [content(p) for p in fixture_repo.packages]
    text = written.read_text()
    assert "Depends: python3:any (>= 3.11~), libgcc-s1 (>> 4.0) | libgcc1, " in text
    assert "Breaks: hurd (<< 1:0.9.git20220301-2), nscd (<< 2.36)\n" in text
    assert "Description: a tool for the lab\n It has a long description\n .\n" in text


def test_written_relations_are_the_original_text(tmp_path: Path) -> None:
    """Each relation field comes back byte for byte as the fixture spells it."""
    written = tmp_path / "Packages.gz"
    write_packages(read_debian(FIXTURE[:1]).packages, written)
    original = FIXTURE[0].read_text()
    fields = ("Depends", "Pre-Depends", "Provides", "Conflicts", "Breaks")
    pattern = re.compile(rf"^(?:{'|'.join(fields)}): .*$", re.MULTILINE)
    with gzip.open(written, "rt") as stream:
        rewritten = stream.read()
    amd64_and_all = original.split("\n\n")
    del amd64_and_all[1]  # the i386 stanza, not read
    assert sorted(pattern.findall(rewritten)) == sorted(pattern.findall("\n\n".join(amd64_and_all)))


@pytest.mark.skipif(shutil.which("dose-distcheck") is None, reason="dose-distcheck not installed")
def test_dose_distcheck_reads_the_written_file(tmp_path: Path, fixture_repo: Repository) -> None:
    def installable(path: Path) -> tuple[set[str], int]:
        run = subprocess.run(
            ["dose-distcheck", "--deb-native-arch=amd64", "-s", f"deb://{path}"],
            capture_output=True,
            text=True,
        )
        assert run.returncode in (0, 1), run.stderr
        total = re.search(r"^total-packages: (\d+)$", run.stdout, re.MULTILINE)
        assert total, run.stdout
        return set(re.findall(r"^  package: (\S+)$", run.stdout, re.MULTILINE)), int(total[1])

    written = tmp_path / "Packages"
    write_packages(fixture_repo.packages, written)
    original = tmp_path / "original"
    original.write_text(FIXTURE[0].read_text() + "\n" + FIXTURE[1].read_text())
    assert installable(written) == ({"base-files", "lab-mta"}, len(fixture_repo))
    assert installable(written)[0] == installable(original)[0]


# --- malformed stanzas ---------------------------------------------------------------------

GOOD = "Package: good\nVersion: 1.0\nArchitecture: all\n\n"  # lines 1-4; the bad stanza: 5-


@pytest.mark.parametrize(
    ("stanza", "line", "package", "problem"),
    [
        ("Package: foo\nArchitecture: all\n", 5, "foo", "no Version field"),
        ("Version: 1.0\nArchitecture: all\n", 5, "?", "no Package field"),
        ("Package: foo\nVersion: 1.0\n", 5, "foo", "no Architecture field"),
        ("Package: foo\nArchitecture: all\nVersion:\n", 7, "foo", "the version is empty"),
        ("Package: foo\nVersion: 1.0-\nArchitecture: all\n", 6, "foo", "revision"),
        ("Package: foo\nVersion: 1:a:b\nArchitecture: all\n", 6, "foo", "start with a digit"),
        ("Package: foo\nVersion: x:1\nArchitecture: all\n", 6, "foo", "epoch"),
        ("Package: Foo\nVersion: 1\nArchitecture: all\n", 5, "'Foo'", "invalid package name"),
        (
            "Package: foo\nVersion: 1\nArchitecture: all\nDepends: a, b (=< 2)\n",
            8,
            "foo",
            "Depends: b: unknown operator '=<'",
        ),
        (
            "Package: foo\nVersion: 1\nArchitecture: all\nBreaks: b (<> 2)\n",
            8,
            "foo",
            "unknown operator '<>'",
        ),
        (
            "Package: foo\nVersion: 1\nArchitecture: all\nDepends: b (!= 2)\n",
            8,
            "foo",
            "cannot parse relation 'b (!= 2)'",
        ),
        (
            "Package: foo\nVersion: 1\nArchitecture: all\nDepends: b (>= 1_0)\n",
            8,
            "foo",
            "cannot parse relation",
        ),
        (
            "Package: foo\nVersion: 1\nArchitecture: all\nPre-Depends: b (>= 1.0-)\n",
            8,
            "foo",
            "Pre-Depends: b: the revision",
        ),
        (
            "Package: foo\nVersion: 1\nArchitecture: all\nDepends: a,\n",
            8,
            "foo",
            "cannot parse relation ''",
        ),
        (
            "Package: foo\nVersion: 1\nArchitecture: all\nProvides: bar (>= 1)\n",
            8,
            "foo",
            "not an exact version",
        ),
        (
            "Package: foo\nVersion: 1\nArchitecture: all\nConflicts: a | b\n",
            8,
            "foo",
            "alternatives",
        ),
        (
            "Package: foo\nVersion: 1\nArchitecture: all\nDepends: a [amd64]\n",
            8,
            "foo",
            "source packages",
        ),
        ("Package: foo\nVersion: 1\nArchitecture: all\nEssential: maybe\n", 8, "foo", "Essential"),
        ("Package: foo\nVersion: 1\nArchitecture: all\nMulti-Arch: any\n", 8, "foo", "Multi-Arch"),
        ("Package: foo\nVersion: 1\nArchitecture: all\nSize: big\n", 8, "foo", "Size"),
        (
            "Package: foo\nVersion: 1\nthis is no field\nArchitecture: all\n",
            7,
            "foo",
            "not a field",
        ),
        ("Package: foo\nVersion: 1\nVersion: 2\nArchitecture: all\n", 7, "foo", "second Version"),
    ],
)
def test_malformed_stanza(
    tmp_path: Path, stanza: str, line: int, package: str, problem: str
) -> None:
    path = tmp_path / "Packages"
    path.write_text(GOOD + stanza)
    with pytest.raises(IndexFormatError) as raised:
        read_debian([path])
    message = str(raised.value)
    print(message)
    assert message.startswith(f"{path}:{line}: package {package}: ")
    assert problem in message
    assert "; expected " in message
    assert (raised.value.origin, raised.value.line, raised.value.package) == (
        str(path),
        line,
        package,
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "Packages"
    path.write_bytes(GOOD.encode() + b"Package: foo\nVersion: 1\nMaintainer: Ren\xe9\n")
    with pytest.raises(IndexFormatError, match=rf"^{re.escape(str(path))}:7: .*not UTF-8"):
        read_debian([path])


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("Packages.gz", GOOD.encode(), "not a valid gzip file (Not a gzipped file"),
        (
            "Packages.gz",
            gzip.compress(GOOD.encode(), mtime=0)[:20],
            "not a valid gzip file (Compressed",
        ),
        ("Packages.xz", lzma.compress(GOOD.encode())[:30], "not a valid xz file (Compressed"),
        ("Packages.xz", b"not xz at all", "not a valid xz file (Input format not supported"),
        ("Packages.zst", b"not zstd", "zstd cannot decompress it ("),
        ("Packages", None, "cannot read it (No such file or directory)"),
        ("Packages.d", "directory", "cannot read it (Is a directory)"),
    ],
)
def test_an_index_that_cannot_be_read_names_the_file(
    tmp_path: Path, name: str, content: bytes | str | None, problem: str
) -> None:
    path = tmp_path / name
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    for read in (read_debian, lambda paths: load_cached(paths, ArtifactStore(tmp_path / "s"))):
        with pytest.raises(index.IndexFileError) as raised:
            read([path])
        assert str(raised.value).startswith(f"{path}: {problem}")
        assert str(raised.value).endswith("; give a Packages index (plain, or .gz, .xz, .zst "
                                          "compressed as its name says)")  # fmt: skip


def test_long_input_is_echoed_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "Packages"
    path.write_text(GOOD + f"Package: foo\nVersion: 1\nArchitecture: all\nSize: {'9x' * 3000}\n")
    with pytest.raises(IndexFormatError) as raised:
        read_debian([path])
    assert str(raised.value) == (
        f"{path}:8: package foo: Size is '{'9x' * 40}'… (6,000 characters); expected a size "
        "in bytes"
    )


def test_obsolete_operators_mean_what_dpkg_says(tmp_path: Path) -> None:
    """dpkg and apt still read `<` as `<=` and `>` as `>=`; so does the reader."""
    path = tmp_path / "Packages"
    path.write_text(
        GOOD + "Package: foo\nVersion: 1\nArchitecture: all\nDepends: a (< 2), b (> 1)\n"
    )
    foo = read_debian([path]).by_name["foo"][0]
    assert foo.depends == ((Relation("a", "<=", "2"),), (Relation("b", ">=", "1"),))


def test_multi_arch_no_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "Packages"
    path.write_text(GOOD + "Package: foo\nVersion: 1\nArchitecture: all\nMulti-Arch: no\n")
    assert read_debian([path]).by_name["foo"][0].multi_arch == ""


@pytest.mark.parametrize(
    ("version", "valid"),
    [
        ("1.0", True),
        ("1:2.36-9+deb12u7", True),
        ("1:2:3", True),  # with an epoch, the upstream part may hold colons
        ("1.0-1-2", True),  # the revision starts after the last hyphen
        ("0~rc1", True),
        ("2.0+git20230101.abc~1-0.1", True),
        ("", False),
        (" ", False),
        ("1.0 2", False),
        ("1.0-", False),  # empty revision
        ("1:", False),
        (":1", False),
        ("x:1", False),
        ("1.0:2", False),  # a colon without an epoch
        ("99999999999:1", False),  # epoch too big for dpkg
        ("a1", False),  # dpkg only warns; policy and dpkg-deb refuse
        ("1:a:b", False),
        ("1_0", False),
        ("1.0-a_b", False),
        ("1.0-1~é", False),
    ],
)
def test_version_rules(version: str, valid: bool) -> None:
    assert (version_problem(version) is None) == valid


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg not installed")
def test_version_rules_agree_with_dpkg() -> None:
    """Every version accepted here, dpkg accepts without a word; every one dpkg calls an
    error, is refused here."""
    random.seed(12)
    alphabet = "0123456789" * 3 + "ab.+~:-_"
    for _ in range(150):
        version = "".join(random.choice(alphabet) for _ in range(random.randint(1, 7)))
        run = subprocess.run(
            ["dpkg", "--compare-versions", version, "eq", "0"], capture_output=True, text=True
        )
        dpkg_refuses = "error" in run.stderr
        dpkg_warns = "warning" in run.stderr
        ours = version_problem(version)
        if ours is None:
            assert not dpkg_refuses and not dpkg_warns, (version, run.stderr)
        elif dpkg_refuses:
            assert ours is not None


# --- the real corpus -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def debian(corpus_files: list[Path]) -> Repository:
    started = time.perf_counter()
    repository = read_debian(corpus_files)
    print(f"parsed the corpus in {time.perf_counter() - started:.2f} s")
    return repository


def test_corpus_counts(debian: Repository) -> None:
    multi_version = sum(1 for versions in debian.by_name.values() if len(versions) > 1)
    essential = {package.name for package in debian.packages if package.essential}
    virtual_only = set(debian.provided_by) - set(debian.by_name)
    print(
        f"{len(debian)} candidates under {len(debian.by_name)} names, {multi_version} with more "
        f"than one version, {len(essential)} Essential, {len(virtual_only)} only provided"
    )
    assert abs(len(debian) - 65_507) <= 20
    assert abs(len(debian.by_name) - 63_666) <= 20
    assert abs(multi_version - 1_808) <= 10
    assert abs(len(virtual_only) - 34_699) <= 50
    assert len(essential) == 23
    assert {"dpkg", "bash", "coreutils", "libc-bin", "base-files"} <= essential
    assert {package.arch for package in debian.packages} == {"amd64", "all"}


def test_corpus_spot_checks(debian: Repository, corpus_files: list[Path]) -> None:
    libc6 = debian.by_name["libc6"]
    assert [package.version for package in libc6] == ["2.36-9+deb12u14", "2.36-9+deb12u7"]
    assert all(package.multi_arch == "same" for package in libc6)
    # the point release has the newer one; the security archive still lists an older one
    assert libc6[0].origin == str(corpus_files[0])
    assert libc6[1].origin == str(corpus_files[2])
    dpkg = debian.by_name["dpkg"][0]
    assert dpkg.essential and dpkg.priority == "required" and dpkg.multi_arch == "foreign"
    assert dpkg.filename.startswith("pool/main/d/dpkg/dpkg_") and dpkg.size > 0
    assert len(dpkg.sha256) == 64
    perl = debian.by_name["perl"][0]
    assert Relation("libversion-perl", "=", "1:0.9929") in perl.provides
    assert Relation("libversion-requirements-perl") in perl.provides
    crossbuild = debian.by_name["crossbuild-essential-arm64"][0]
    assert (Relation("gcc-aarch64-linux-gnu", ">=", "4:10.2"), Relation("gcc", arch="arm64")) in (
        crossbuild.depends
    )


def test_corpus_stanza_lines(debian: Repository, corpus_files: list[Path]) -> None:
    """Package.line points at the stanza's `Package:` line in the decompressed file."""
    main = corpus_files[0]
    with lzma.open(main, "rt") as stream:
        lines = stream.read().splitlines()
    from_main = [package for package in debian.packages if package.origin == str(main)]
    for package in random.Random(3).sample(from_main, 200):
        assert lines[package.line - 1] == f"Package: {package.name}"


def test_unversioned_provides_does_not_satisfy_a_versioned_dependency(debian: Repository) -> None:
    perl = debian.by_name["perl"][0]
    assert perl in debian.satisfiers(Relation("libversion-requirements-perl"))
    assert perl not in debian.satisfiers(Relation("libversion-requirements-perl", ">=", "0.1"))


def test_versioned_provides_satisfies_a_versioned_dependency(debian: Repository) -> None:
    perl = debian.by_name["perl"][0]
    assert perl in debian.satisfiers(Relation("libversion-perl", ">=", "1:0.99"))
    assert perl in debian.satisfiers(Relation("libversion-perl", "=", "1:0.9929"))
    assert perl not in debian.satisfiers(Relation("libversion-perl", ">>", "1:0.9929"))


def test_any_needs_multi_arch_allowed(debian: Repository) -> None:
    python3 = debian.by_name["python3"][0]
    assert python3.multi_arch == "allowed"
    assert python3 in debian.satisfiers(Relation("python3", arch="any"))
    dpkg = debian.by_name["dpkg"][0]
    assert dpkg.multi_arch == "foreign"
    assert dpkg not in debian.satisfiers(Relation("dpkg", arch="any"))
    assert dpkg in debian.satisfiers(Relation("dpkg"))
    # the relation as the archive writes it, on a real dependant
    aodh = debian.by_name["aodh-common"][0]
    assert (Relation("python3", arch="any"),) in aodh.depends


def test_foreign_architecture_is_unsatisfiable(debian: Repository) -> None:
    assert debian.satisfiers(Relation("gcc", arch="arm64")) == ()
    assert debian.satisfiers(Relation("gcc", arch="amd64"))  # our own architecture
    assert debian.satisfiers(Relation("gcc", arch="native"))
    foreign = {
        relation
        for package in debian.packages
        for group in package.requirements()
        for relation in group
        if relation.arch not in (None, "any", "native", "amd64")
    }
    print(f"{len(foreign)} distinct requirements name a foreign architecture")
    assert foreign and all(not debian.satisfiers(relation) for relation in foreign)


def test_a_package_does_not_conflict_with_its_own_provides(debian: Repository) -> None:
    postfix = debian.by_name["postfix"][0]
    assert Relation("mail-transport-agent") in postfix.provides
    assert Relation("mail-transport-agent") in postfix.conflicts
    conflicting = debian.conflicting(postfix)
    assert postfix not in conflicting
    assert {"exim4-daemon-light", "exim4-daemon-heavy"} <= {p.name for p in conflicting}


def test_corpus_write_read_round_trip(debian: Repository, tmp_path: Path) -> None:
    written = tmp_path / "Packages.gz"
    write_packages(debian.packages, written)
    again = read_debian([written])
    assert len(again) == len(debian)
    assert all(
        content(a) == content(b) for a, b in zip(again.packages, debian.packages, strict=True)
    )


# --- the cache -----------------------------------------------------------------------------


def test_load_cached_parses_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path / "store")
    first = load_cached(FIXTURE, store)

    def no_parsing(*args: object) -> list[Package]:
        raise AssertionError("parsed again")

    monkeypatch.setattr(debian_module, "_read_debian_packages", no_parsing)
    second = load_cached(FIXTURE, store)
    assert [content(p) for p in second.packages] == [content(p) for p in first.packages]
    assert [(p.origin, p.line) for p in second.packages] == [
        (p.origin, p.line) for p in first.packages
    ]
    assert len(list((tmp_path / "store").glob("debian-index-*/packages.pickle"))) == 1


def test_load_cached_notices_a_changed_index(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    path = tmp_path / "Packages"
    path.write_text(GOOD)
    assert [str(p) for p in load_cached([path], store).packages] == ["good 1.0 (all)"]
    path.write_text(GOOD.replace("1.0", "2.0"))
    assert [str(p) for p in load_cached([path], store).packages] == ["good 2.0 (all)"]
    assert [str(p) for p in load_cached([path], store, arch="i386").packages] == ["good 2.0 (all)"]
    assert len(list((tmp_path / "store").glob("debian-index-*"))) == 3 * 2  # and their locks


def test_load_cached_parses_the_corpus_only_once(
    debian: Repository,
    tmp_path: Path,
    corpus_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = ArtifactStore(tmp_path / "store")
    load_cached(corpus_files, store)

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second load parsed the index again instead of using the cache")

    monkeypatch.setattr(debian_module, "_read_debian_packages", no_parsing)
    cached = load_cached(corpus_files, store)  # bench/solver.py prints how much faster this is
    assert len(cached) == len(debian)
    assert all(
        content(a) == content(b) for a, b in zip(cached.packages, debian.packages, strict=True)
    )
    assert [p.version for p in cached.by_name["libc6"]] == ["2.36-9+deb12u14", "2.36-9+deb12u7"]


# --- RPM -----------------------------------------------------------------------------------

# the order rpm itself gives (checked with `rpm --eval '%{lua: print(rpm.vercmp(a, b))}'`)
RPMVERCMP = [
    ("1.0", "1.0", 0),
    ("1.0", "2.0", -1),
    ("2.0.1", "2.0", 1),
    ("1.0", "1.0a", -1),
    ("1.0a", "1.0aa", -1),
    ("2.0.1a", "2.0.1", 1),
    ("5.5p1", "5.5p10", -1),
    ("10b2", "10a1", 1),
    ("1.0", "1.0.0", -1),
    ("001", "1", 0),
    ("1.0_1", "1.0.1", 0),  # separators only separate
    ("fc4", "fc.4", 0),
    ("a", "1", -1),  # numbers beat letters
    ("1.0~rc1", "1.0", -1),
    ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~rc1~git1", "1.0~rc1", -1),
    ("1.0^", "1.0", 1),
    ("1.0^git1", "1.0", 1),
    ("1.0^git1", "1.01", -1),
    ("1.0^git1", "1.0.1", -1),
    ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.0^git1~pre", "1.0^git1", -1),
    ("1.0^20160101", "1.0^20160102", -1),
]


@pytest.mark.parametrize(("left", "right", "order"), RPMVERCMP)
def test_rpmvercmp(left: str, right: str, order: int) -> None:
    assert rpmvercmp(left, right) == order
    assert rpmvercmp(right, left) == -order


@pytest.mark.parametrize(
    ("left", "right", "order"),
    [
        ("1:1.0-1", "2.0-1", 1),  # the epoch first
        ("0:2.0-1", "2.0-1", 0),
        ("2.0-1", "2.0-2", -1),
        ("2.0-10", "2.0-9", 1),
        ("2.0", "2.0-5", 0),  # no release: any release
        ("2.0-5", "2.0", 0),
        ("2.1", "2.0-5", 1),
        ("1:2.0~rc1-1.fc40", "1:2.0-0.1.fc40", -1),
    ],
)
def test_rpm_compare(left: str, right: str, order: int) -> None:
    assert rpm_compare(left, right) == order


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm not installed")
def test_rpm_compare_agrees_with_rpm(tmp_path: Path) -> None:
    generator = random.Random(5)

    def evr() -> str:
        def part(size: int) -> str:
            return "".join(generator.choice("0123456789.a~^_") for _ in range(size))

        epoch = generator.choice(["", "0:", "1:", "2:"])
        return f"{epoch}{generator.choice('0123456789')}{part(3)}-{part(2)}1"

    pairs = [(evr(), evr()) for _ in range(600)] + [(a, b) for a, b, _ in RPMVERCMP]
    script = tmp_path / "pairs.lua"
    script.write_text("".join(f'print(rpm.vercmp("{a}", "{b}") .. " ")\n' for a, b in pairs))
    run = subprocess.run(
        ["rpm", "--eval", f"%{{lua: dofile('{script}')}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = [int(word) for word in run.stdout.split()]
    assert [rpm_compare(a, b) for a, b in pairs] == theirs


SPEC = """\
%global debug_package %{{nil}}
Name: {name}
{epoch}Version: {version}
Release: {release}
Summary: a test package
License: MIT
{arch}{tags}
%description
A test package of ucvm-lab.

%install
mkdir -p %{{buildroot}}/usr/bin
touch %{{buildroot}}/usr/bin/{name}-tool

%files
/usr/bin/{name}-tool
"""

# fmt: off
RPMS = [
    # name, epoch, version, release, BuildArch, --target, extra tags
    ("alpha", "", "1.0", "1", "noarch", None, [
        "Provides: mail-transport-agent", "Provides: libalpha = 1.0",
        "Conflicts: mail-transport-agent", "Obsoletes: alpha-old < 1.0",
        "Requires(pre): beta", "Requires: beta >= 1:2.0", "Requires: /usr/bin/beta-tool",
        "Requires: /opt/nowhere/tool", "Requires: (gamma or delta >= 2)",
    ]),
    ("beta", "1", "2.0", "1", "", None, []),
    ("beta", "1", "2.1", "1", "", None, ["Requires: gamma"]),
    ("beta", "1", "2.1", "1", "", "i686", []),
    ("gamma", "", "0.5", "2", "noarch", None, ["Conflicts: beta < 1:2.1"]),
    ("delta", "", "3.0~rc1", "1", "noarch", None, ["Provides: mail-transport-agent"]),
]
# fmt: on


@pytest.fixture(scope="module")
def rpm_primary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The primary.xml.gz of a real repository built by rpmbuild and createrepo_c."""
    if shutil.which("rpmbuild") is None or shutil.which("createrepo_c") is None:
        pytest.skip("rpmbuild or createrepo_c not installed")
    top = tmp_path_factory.mktemp("rpm")
    for number, (name, epoch, version, release, arch, target, tags) in enumerate(RPMS):
        spec = top / f"{number}-{name}.spec"
        spec.write_text(
            SPEC.format(
                name=name,
                epoch=f"Epoch: {epoch}\n" if epoch else "",
                version=version,
                release=release,
                arch=f"BuildArch: {arch}\n" if arch else "",
                tags="\n".join(tags),
            )
        )
        command = ["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)]
        subprocess.run(command + (["--target", target] if target else []), check=True,
                       capture_output=True)  # fmt: skip
    subprocess.run(["createrepo_c", "-q", str(top / "RPMS")], check=True, capture_output=True)
    (primary,) = (top / "RPMS" / "repodata").glob("*-primary.xml.gz")
    return primary


def test_rpm_repository(rpm_primary: Path) -> None:
    repository = read_rpm_primary(rpm_primary)
    assert sorted(str(package) for package in repository.packages) == [
        "alpha 1.0-1 (noarch)",
        "beta 1:2.0-1 (x86_64)",
        "beta 1:2.1-1 (x86_64)",  # the i686 one dropped
        "delta 3.0~rc1-1 (noarch)",
        "gamma 0.5-2 (noarch)",
    ]
    assert [package.version for package in repository.by_name["beta"]] == ["1:2.1-1", "1:2.0-1"]
    alpha = repository.by_name["alpha"][0]
    assert alpha.pre_depends == ((Relation("beta"),),)
    assert alpha.depends == (
        (Relation("gamma"), Relation("delta", ">=", "2")),
        (Relation("/usr/bin/beta-tool"),),  # a file another package holds: kept
        (Relation("beta", ">=", "1:2.0"),),
    )  # no rpmlib() and no /opt/nowhere/tool, which nothing in primary.xml holds
    assert alpha.provides == (
        Relation("libalpha", "=", "1.0"),
        Relation("mail-transport-agent"),
    )
    assert alpha.conflicts == (Relation("mail-transport-agent"),)
    assert alpha.filename == "noarch/alpha-1.0-1.noarch.rpm"
    assert len(alpha.sha256) == 64 and alpha.size > 0
    assert alpha.extra == {"Source-RPM": "alpha-1.0-1.src.rpm"}
    beta = repository.by_name["beta"][0]
    assert beta.depends == ((Relation("gamma"),),)
    assert Relation("/usr/bin/beta-tool") in beta.provides


def test_rpm_satisfaction(rpm_primary: Path) -> None:
    repository = read_rpm_primary(rpm_primary)

    def satisfiers(relation: Relation) -> list[str]:
        return sorted(str(package) for package in repository.satisfiers(relation))

    both_betas = ["beta 1:2.0-1 (x86_64)", "beta 1:2.1-1 (x86_64)"]
    assert satisfiers(Relation("/usr/bin/beta-tool")) == both_betas
    assert satisfiers(Relation("beta", ">=", "1:2.0")) == both_betas
    assert satisfiers(Relation("beta", ">>", "1:2.0")) == both_betas[1:]
    assert satisfiers(Relation("beta", "=", "1:2.0")) == both_betas[:1]  # any release of 2.0
    assert satisfiers(Relation("delta", ">=", "2")) == ["delta 3.0~rc1-1 (noarch)"]
    assert satisfiers(Relation("delta", ">=", "3.0")) == []  # 3.0~rc1 is before 3.0
    assert satisfiers(Relation("alpha")) == ["alpha 1.0-1 (noarch)"]  # once, not also as provider
    alpha, gamma = repository.by_name["alpha"][0], repository.by_name["gamma"][0]
    assert {str(p) for p in repository.conflicting(alpha)} == {"delta 3.0~rc1-1 (noarch)"}
    assert {str(p) for p in repository.conflicting(gamma)} == {"beta 1:2.0-1 (x86_64)"}


def test_rpm_stanza_lines(rpm_primary: Path) -> None:
    with gzip.open(rpm_primary, "rt") as stream:
        lines = stream.read().splitlines()
    for package in read_rpm_primary(rpm_primary).packages:
        assert lines[package.line - 1].strip() == '<package type="rpm">'
        assert lines[package.line].strip() == f"<name>{package.name}</name>"


@pytest.mark.parametrize("suffix", ["", ".xz", ".zst"])
def test_rpm_primary_compressions(rpm_primary: Path, tmp_path: Path, suffix: str) -> None:
    with gzip.open(rpm_primary) as stream:
        xml = stream.read()
    target = tmp_path / f"primary.xml{suffix}"
    if suffix == ".zst":
        if shutil.which("zstd") is None:
            pytest.skip("zstd not installed")
        subprocess.run(["zstd", "-q", "-o", str(target), "-"], input=xml, check=True)
    elif suffix == ".xz":
        target.write_bytes(lzma.compress(xml))
    else:
        target.write_bytes(xml)
    expected = read_rpm_primary(rpm_primary)
    assert [content(p) for p in read_rpm_primary(target).packages] == [
        content(p) for p in expected.packages
    ]


def test_rpm_broken_xml(tmp_path: Path) -> None:
    path = tmp_path / "primary.xml"
    path.write_text(
        '<metadata xmlns="http://linux.duke.edu/metadata/common">\n'
        '<package type="rpm">\n  <name>zeta</name>\n  <arch>noarch</arch>\n</metadata>\n'
    )
    with pytest.raises(IndexFormatError, match=rf"^{re.escape(str(path))}:5: package zeta: "):
        read_rpm_primary(path)


def test_rpm_unknown_flags(tmp_path: Path) -> None:
    path = tmp_path / "primary.xml"
    path.write_text(
        '<metadata xmlns="http://linux.duke.edu/metadata/common"'
        ' xmlns:rpm="http://linux.duke.edu/metadata/rpm">\n'
        '<package type="rpm"><name>zeta</name><arch>noarch</arch>\n'
        '<version epoch="0" ver="1" rel="1"/><format><rpm:requires>\n'
        '<rpm:entry name="eta" flags="NE" ver="2"/>\n'
        "</rpm:requires></format></package></metadata>\n"
    )
    with pytest.raises(IndexFormatError, match=r":4: package zeta: entry 'eta' has flags 'NE'"):
        read_rpm_primary(path)


def test_rpm_requires_that_are_skipped_or_rewritten(tmp_path: Path) -> None:
    """rpmlib() features and rich dependencies other than `or` are skipped; a file require is
    kept when some package lists that file, and that package then provides it."""
    path = tmp_path / "primary.xml"
    path.write_text(
        '<metadata xmlns="http://linux.duke.edu/metadata/common"'
        ' xmlns:rpm="http://linux.duke.edu/metadata/rpm">\n'
        '<package type="rpm"><name>zeta</name><arch>x86_64</arch>\n'
        '<version epoch="2" ver="1.0" rel="3.fc40"/><format><rpm:requires>\n'
        '<rpm:entry name="rpmlib(PayloadIsXz)" flags="LE" epoch="0" ver="5.2" rel="1"/>\n'
        '<rpm:entry name="(eta if theta)"/>\n'
        '<rpm:entry name="(eta and theta)"/>\n'
        '<rpm:entry name="((eta or theta) or iota)"/>\n'
        '<rpm:entry name="(eta &lt; 2 or theta)"/>\n'
        '<rpm:entry name="/usr/sbin/sendmail"/>\n'
        "</rpm:requires></format></package>\n"
        '<package type="rpm"><name>eta</name><arch>noarch</arch>\n'
        '<version epoch="0" ver="1" rel="1"/><format>\n'
        "<file>/usr/sbin/sendmail</file><file>/usr/sbin/other</file>\n"
        "</format></package>\n"
        '<package type="rpm"><name>eta</name><arch>src</arch>\n'
        '<version epoch="0" ver="1" rel="1"/></package></metadata>\n'
    )
    repository = read_rpm_primary(path)
    assert sorted(str(package) for package in repository.packages) == [
        "eta 1-1 (noarch)",
        "zeta 2:1.0-3.fc40 (x86_64)",
    ]
    zeta, eta = repository.by_name["zeta"][0], repository.by_name["eta"][0]
    assert zeta.depends == (
        (Relation("eta", "<<", "2"), Relation("theta")),
        (Relation("/usr/sbin/sendmail"),),
    )
    assert eta.provides == (Relation("/usr/sbin/sendmail"),)
    assert (zeta.line, eta.line) == (2, 11)
