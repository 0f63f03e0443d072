"""Tests of lab.build.fixture_debs: the rebase suite's tiny .debs build, byte for byte the same
every time, hold what the suite relies on (dpkg-deb --info and --contents), and their postinst
adds the accounts whose ids collide with the cells' first local user."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from lab.artifacts import ArtifactStore
from lab.build import fixture_debs
from lab.build.fixture_debs import FIXTURE_DEBS, FixtureDebError

KEYS = list(FIXTURE_DEBS)
SVC_ACCOUNTS = {
    "1.0": [],
    "2.0": [("ucvmsvc", 1000)],
    "3.0": [("ucvmsvc", 1000), ("ucvmsvc2", 1001)],
}


def dpkg_deb(*args: str | Path) -> str:
    return subprocess.run(["dpkg-deb", *map(str, args)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every fixture .deb, built once, without the store."""
    out = tmp_path_factory.mktemp("debs")
    return {key: fixture_debs.build_deb(deb, out) for key, deb in FIXTURE_DEBS.items()}


def contents(deb: Path) -> dict[str, str]:
    """dpkg-deb --contents: path -> `MODE OWNER DATE` (directories end in /)."""
    listing = {}
    for line in dpkg_deb("--contents", deb).splitlines():
        mode, owner, _size, day, hour, path = line.split(None, 5)
        listing[path.removeprefix(".")] = f"{mode} {owner} {day} {hour}"
    return listing


def test_the_four_fixtures_are_the_ones_the_releases_and_the_suite_name() -> None:
    assert KEYS == ["ucvm-fixture-local=1.0", "ucvm-fixture-svc=1.0", "ucvm-fixture-svc=2.0",
                    "ucvm-fixture-svc=3.0"]  # fmt: skip


@pytest.mark.parametrize("key", KEYS)
def test_the_control_fields_say_name_version_and_all(built: dict[str, Path], key: str) -> None:
    deb = FIXTURE_DEBS[key]
    info = dpkg_deb("--info", built[key])
    fields = dict(re.findall(r"^ ([A-Z][\w-]+): (.*)$", info, re.MULTILINE))
    assert (fields["Package"], fields["Version"], fields["Architecture"]) == (
        deb.name, deb.version, "all"
    )  # fmt: skip
    assert built[key].name == f"{deb.name}_{deb.version}_all.deb"
    assert fields.get("Depends", "") == deb.depends


@pytest.mark.parametrize("key", KEYS)
def test_every_entry_is_root_s_and_dated_by_the_fixed_epoch(
    built: dict[str, Path], key: str
) -> None:
    listing = contents(built[key])
    assert listing and all(" root/root 2026-01-01 00:00" in meta for meta in listing.values())


def test_the_local_package_has_its_script_and_its_conffile(built: dict[str, Path]) -> None:
    deb = built["ucvm-fixture-local=1.0"]
    listing = contents(deb)
    assert listing["/usr/bin/ucvm-fixture-local"].startswith("-rwxr-xr-x ")
    assert listing["/etc/ucvm-fixture-local.conf"].startswith("-rw-r--r-- ")
    assert dpkg_deb("--info", deb, "conffiles") == "/etc/ucvm-fixture-local.conf\n"
    assert "postinst" not in dpkg_deb("--info", deb)


@pytest.mark.parametrize("version", ["1.0", "2.0", "3.0"])
def test_the_service_package_ships_its_version_and_the_homes_of_its_accounts(
    built: dict[str, Path], tmp_path: Path, version: str
) -> None:
    deb = built[f"ucvm-fixture-svc={version}"]
    files = {p for p in contents(deb) if not p.endswith("/")}
    homes = {p.rstrip("/") for p in contents(deb) if p.startswith("/var/lib/ucvmsvc")}
    assert files == {"/usr/share/ucvm-fixture-svc/version"}
    assert homes == {f"/var/lib/{name}" for name, _ in SVC_ACCOUNTS[version]}
    dpkg_deb("--extract", deb, tmp_path)
    assert (tmp_path / "usr/share/ucvm-fixture-svc/version").read_text() == f"{version}\n"


def test_md5sums_match_the_files_and_leave_the_conffile_to_dpkg(
    built: dict[str, Path], tmp_path: Path
) -> None:
    deb = built["ucvm-fixture-local=1.0"]
    dpkg_deb("--extract", deb, tmp_path / "root")
    dpkg_deb("--control", deb, tmp_path / "control")
    sums = (tmp_path / "control/md5sums").read_text()
    assert sums.split()[1::2] == ["usr/bin/ucvm-fixture-local"]
    check = subprocess.run(["md5sum", "-c", tmp_path / "control/md5sums"], cwd=tmp_path / "root",
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_debs_are_byte_for_byte_the_same_whatever_the_umask_and_order(
    built: dict[str, Path], tmp_path: Path
) -> None:
    old = os.umask(0o077)
    try:
        again = {k: fixture_debs.build_deb(FIXTURE_DEBS[k], tmp_path) for k in reversed(KEYS)}
    finally:
        os.umask(old)
    assert {k: sha256(p) for k, p in again.items()} == {k: sha256(p) for k, p in built.items()}
    assert len({sha256(p) for p in built.values()}) == len(KEYS)


def ar_member_dates(deb: Path) -> list[int]:
    """The mtime field of each member header of the .deb's ar archive."""
    data, at, dates = deb.read_bytes(), 8, []
    assert data[:at] == b"!<arch>\n"
    while at < len(data):
        header = data[at : at + 60]
        dates.append(int(header[16:28]))
        at += 60 + int(header[48:58]) + int(header[48:58]) % 2
    return dates


@pytest.mark.parametrize("key", KEYS)
def test_the_archive_is_dated_by_the_fixed_epoch_not_by_the_build(
    built: dict[str, Path], key: str
) -> None:
    assert ar_member_dates(built[key]) == [fixture_debs.FIXTURE_EPOCH] * 3


def test_the_store_builds_each_deb_once_and_another_store_the_same_bytes(
    built: dict[str, Path], tmp_path: Path
) -> None:
    first, second = ArtifactStore(tmp_path / "a"), ArtifactStore(tmp_path / "b")
    key = "ucvm-fixture-svc=2.0"
    deb = fixture_debs.fixture_deb(key, first)
    assert deb.parent.parent == first.root and deb.name == built[key].name
    assert fixture_debs.fixture_deb(key, first) == deb  # cached: the same artifact
    assert sha256(fixture_debs.fixture_deb(key, second)) == sha256(deb) == sha256(built[key])


def test_an_unknown_fixture_names_the_known_ones() -> None:
    with pytest.raises(FixtureDebError) as caught:
        fixture_debs.fixture_deb("ucvm-fixture-svc=9.9")
    assert str(caught.value) == (
        "no fixture .deb 'ucvm-fixture-svc=9.9'; expected one of: " + ", ".join(KEYS)
        + " (FIXTURE_DEBS in lab/build/fixture_debs.py)"
    )  # fmt: skip


# --- the postinst, run against stand-ins of getent, groupadd, useradd and chown ----------------


def run_postinst(tmp_path: Path, deb: Path, known: str, *args: str) -> list[str]:
    """The postinst of ``deb`` run with ``args``; getent says ``known`` names exist. Returns
    the commands it ran (groupadd, useradd, chown), one a line."""
    dpkg_deb("--control", deb, tmp_path / "control")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    calls.write_text("")
    for tool in ("groupadd", "useradd", "chown"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>{calls}\n')
    (bin_dir / "getent").write_text(
        f'#!/bin/sh\ncase " {known} " in *" $2 "*) exit 0;; esac\nexit 2\n'
    )
    for stand_in in bin_dir.iterdir():
        stand_in.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    subprocess.run([tmp_path / "control/postinst", *args], env=env, check=True)
    return calls.read_text().splitlines()


@pytest.mark.parametrize("version", ["2.0", "3.0"])
def test_the_postinst_adds_each_account_at_its_id_owning_its_home(
    built: dict[str, Path], tmp_path: Path, version: str
) -> None:
    calls = run_postinst(tmp_path, built[f"ucvm-fixture-svc={version}"], "", "configure", "")
    expected = []
    for name, uid in SVC_ACCOUNTS[version]:
        expected += [
            f"groupadd --system --gid {uid} {name}",
            f"useradd --system --uid {uid} --gid {uid} --no-create-home --no-log-init "
            f"--home-dir /var/lib/{name} --shell /usr/sbin/nologin {name}",
            f"chown {name}:{name} /var/lib/{name}",
        ]
    assert calls == expected


def test_the_postinst_adds_no_account_twice_and_does_nothing_but_configure(
    built: dict[str, Path], tmp_path: Path
) -> None:
    deb = built["ucvm-fixture-svc=3.0"]
    again = run_postinst(tmp_path, deb, "ucvmsvc ucvmsvc2", "configure", "3.0")
    assert again == ["chown ucvmsvc:ucvmsvc /var/lib/ucvmsvc",
                     "chown ucvmsvc2:ucvmsvc2 /var/lib/ucvmsvc2"]  # fmt: skip
    assert run_postinst(tmp_path, deb, "", "abort-upgrade", "2.0") == []


def test_only_the_versions_with_accounts_have_a_postinst(built: dict[str, Path]) -> None:
    with_postinst = {k for k, deb in built.items() if "postinst" in dpkg_deb("--info", deb)}
    assert with_postinst == {"ucvm-fixture-svc=2.0", "ucvm-fixture-svc=3.0"}
