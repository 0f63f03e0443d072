"""Tests of lab.build.rootfs, .releases and .os_files: releases.yaml and its precise errors, the
lab's files in the OS root (the ready marker and the command channel of docs/os-on-demand.md),
the pieces of the build that need no mmdebstrap; and one nightly test that builds the default
release for real.
"""

from __future__ import annotations

import configparser
import hashlib
import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.artifacts import ArtifactStore
from lab.build import bootloader, fixture_debs, os_files, rootfs
from lab.build.releases import Release, ReleaseError, load_release_set, load_releases
from lab.observe import ContextStep, record_from_console
from lab.packages import closed_list

REPO = Path(__file__).resolve().parents[1]
OS_FILES = REPO / "lab/build/os-files"
READY = OS_FILES / "usr/lib/ucvm/ucvm-ready"
CHANNEL = OS_FILES / "usr/lib/ucvm/ucvm-channel"
CHANNEL_KEY = OS_FILES / "usr/lib/ucvm/ucvm-channel-key"
SSH_HOSTKEYS = OS_FILES / "usr/lib/ucvm/ucvm-ssh-hostkeys"
KEY = "5a" * 32
MARKER = re.compile(
    r"^ucvm: phase=ready t=[\d.]+ os=\S+ release=\S+ snapshot=\S+ cache_bytes=\d+ "
    r"fetched_bytes=\d+ evicted_blocks=\d+ units_failed=(?:\d+|unknown) "
    r"cloud_init=(?:absent|disabled|done|error|unknown)(?: cloud_init_ds=[A-Za-z0-9._:/+-]+)?$"
)
# cloud-init's warnings and errors of this boot, printed before the ready line
COMPLAINT = re.compile(
    r'^ucvm: context step=cloud-init status=(?:warning|error|critical) detail="(?:[^"\\]|\\.)*"$'
)
RECORD_KEYS = [
    "release", "branch", "shopping_list", "shopping_list_sha256", "closed_list_sha256",
    "packages", "built",
]  # fmt: skip

# A small valid releases file; each bad case changes one piece of it (line numbers beside).
GOOD = """\
default_branch: prod
releases:
  - tag: "1.0"
    branch: prod
    shopping_list: lists/a.list
    overlay:
      /etc/motd: |
        hello
  - tag: "2.0-dev"
    branch: devel
    shopping_list: lists/b.list
"""
#  1 default_branch   3 tag "1.0"   5 shopping_list   7 /etc/motd   9 tag "2.0-dev"   11 list


def write_releases(folder: Path, text: str = GOOD) -> Path:
    (folder / "lists").mkdir(exist_ok=True)
    (folder / "lists/a.list").write_text("# base\nsystemd-sysv\nopenssh-server\n")
    (folder / "lists/b.list").write_text("systemd-sysv\npython3-minimal=3.11.2-6+deb12u6\n")
    path = folder / "releases.yaml"
    path.write_text(text)
    return path


def problems(folder: Path, text: str) -> list[str]:
    with pytest.raises(ReleaseError) as caught:
        load_releases(write_releases(folder, text))
    return list(caught.value.problems)


# --------------------------------------------------------------------------- releases.yaml


def test_the_real_releases_file_loads() -> None:
    releases = load_release_set(REPO / "releases.yaml")
    prod = [r.tag for r in releases.releases if r.branch == "prod"]
    devel = [r.tag for r in releases.releases if r.branch == "devel"]
    assert prod[:3] == ["1.0", "1.1", "1.2"] and "2.0-dev" in devel
    assert releases.default.tag == prod[-1]
    lists = {f"ucvm-os-{release.tag}.list" for release in releases.releases}
    fixtures = ("faults", "gate")  # the fault and gate tests' releases: a release, changed
    for release in releases.releases:
        assert release.shopping_list.is_file()
        # a fixture release reuses the list of the release it breaks or slows down
        own = release.shopping_list.name == f"ucvm-os-{release.tag}.list"
        assert own or (release.branch in fixtures and release.shopping_list.name in lists)
        assert "/etc/hostname" in release.overlay and "/etc/motd" in release.overlay
    # each release differs from the one before in packages and in configuration
    shipped = [r for r in releases.releases if r.branch not in fixtures]
    for old, new in itertools.pairwise(shipped):
        assert old.shopping_list.read_text() != new.shopping_list.read_text()
        assert old.overlay != new.overlay


def test_the_real_releases_want_loaders_the_lab_builds() -> None:
    wants = {r.tag: r.loader for r in load_release_set(REPO / "releases.yaml").releases}
    assert set(wants.values()) <= set(bootloader.LOADER_VERSIONS)
    assert wants["2.0-dev"] == "0.2" and wants["1.2"] == bootloader.IMAGE_LOADER


def test_a_release_wants_the_image_loader_unless_it_names_another(tmp_path: Path) -> None:
    text = GOOD.replace("    shopping_list: lists/b.list\n", "    shopping_list: lists/b.list\n"
                        '    loader: "0.2"\n')  # fmt: skip
    first, second = load_release_set(write_releases(tmp_path, text)).releases
    assert (first.loader, second.loader) == (bootloader.IMAGE_LOADER, "0.2")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"0.3"', "loader '0.3' is not a boot loader version the lab builds; expected one of: "
                  f"{', '.join(bootloader.LOADER_VERSIONS)} (LOADER_VERSIONS in "
                  "lab/build/bootloader.py), or leave the key out for 0.1"),
        ("0.2", "expected a string; found number 0.2 (put it in quotes to make it a string)"),
    ],
)  # fmt: skip
def test_a_loader_the_lab_does_not_build_is_refused_naming_the_release(
    tmp_path: Path, value: str, expected: str
) -> None:
    text = GOOD.replace("    shopping_list: lists/b.list\n", "    shopping_list: lists/b.list\n"
                        f"    loader: {value}\n")  # fmt: skip
    (message,) = problems(tmp_path, text)
    assert (
        message
        == f"{tmp_path / 'releases.yaml'}:12:13: releases[1] (tag '2.0-dev').loader: {expected}"
    )


def test_the_real_releases_ship_the_fixture_debs_the_rebase_suite_needs() -> None:
    wants = {r.tag: r.fixture_debs for r in load_release_set(REPO / "releases.yaml").releases}
    assert all(key in fixture_debs.FIXTURE_DEBS for keys in wants.values() for key in keys)
    assert wants["1.0"] == wants["1.1"] == ()  # a cell installs ucvm-fixture-svc 1.0 there
    assert wants["1.2"] == ("ucvm-fixture-svc=2.0",) and wants["2.0-dev"] == (
        "ucvm-fixture-svc=3.0",
    )


def with_fixtures(value: str) -> str:
    """GOOD with `fixture_debs: VALUE` on release 2.0-dev (line 12)."""
    return GOOD.replace("    shopping_list: lists/b.list\n", "    shopping_list: lists/b.list\n"
                        f"    fixture_debs: {value}\n")  # fmt: skip


def test_a_release_installs_no_fixture_debs_unless_it_names_them(tmp_path: Path) -> None:
    text = with_fixtures("[ucvm-fixture-local=1.0, ucvm-fixture-svc=2.0]")
    first, second = load_release_set(write_releases(tmp_path, text)).releases
    assert first.fixture_debs == ()
    assert second.fixture_debs == ("ucvm-fixture-local=1.0", "ucvm-fixture-svc=2.0")


SVC_KEYS = "ucvm-fixture-svc=1.0, ucvm-fixture-svc=2.0, ucvm-fixture-svc=3.0"


@pytest.mark.parametrize(
    ("value", "where", "expected"),
    [
        ("[ucvm-fixture-svc=9.9]", "12:20: releases[1] (tag '2.0-dev').fixture_debs[0]",
         "'ucvm-fixture-svc=9.9' is not a fixture .deb the lab builds; expected name=version, "
         f"one of: {SVC_KEYS} (FIXTURE_DEBS in lab/build/fixture_debs.py)"),
        ("[ucvm-fixture-svc]", "12:20: releases[1] (tag '2.0-dev').fixture_debs[0]",
         "'ucvm-fixture-svc' is not a fixture .deb the lab builds; expected name=version, "
         f"one of: {SVC_KEYS} (FIXTURE_DEBS in lab/build/fixture_debs.py)"),
        ("[openssh-server=1:9.2p1-2]", "12:20: releases[1] (tag '2.0-dev').fixture_debs[0]",
         "'openssh-server=1:9.2p1-2' is not a fixture .deb the lab builds; expected name=version, "
         f"one of: {', '.join(fixture_debs.FIXTURE_DEBS)} (FIXTURE_DEBS in "
         "lab/build/fixture_debs.py)"),
        ("ucvm-fixture-svc=2.0", "12:19: releases[1] (tag '2.0-dev').fixture_debs",
         "expected a list; found string 'ucvm-fixture-svc=2.0'"),
        ("[2.0]", "12:20: releases[1] (tag '2.0-dev').fixture_debs[0]",
         "expected a string; found number 2.0 (put it in quotes to make it a string)"),
        ("[ucvm-fixture-svc=2.0, ucvm-fixture-svc=3.0]",
         "12:42: releases[1] (tag '2.0-dev').fixture_debs[1]",
         "'ucvm-fixture-svc=3.0': the release already installs 'ucvm-fixture-svc=2.0'; "
         "name one version of ucvm-fixture-svc"),
    ],
)  # fmt: skip
def test_a_bad_fixture_deb_is_refused_at_its_place_naming_the_known_ones(
    tmp_path: Path, value: str, where: str, expected: str
) -> None:
    (message,) = problems(tmp_path, with_fixtures(value))
    assert message == f"{tmp_path / 'releases.yaml'}:{where}: {expected}"


def test_the_fixture_debs_are_in_the_input_hash_and_the_record(tmp_path: Path) -> None:
    text = with_fixtures("[ucvm-fixture-svc=2.0]")
    plain, with_svc = load_release_set(write_releases(tmp_path, text)).releases
    lists = rootfs.AptLists(tmp_path, (), {"Packages": "00"})
    store = ArtifactStore(tmp_path / "store")
    deb = fixture_debs.fixture_deb("ucvm-fixture-svc=2.0", store)
    assert rootfs.release_inputs(plain, lists, 1, store)["fixture_debs"] == {}
    inputs = rootfs.release_inputs(with_svc, lists, 1, store)
    assert inputs["fixture_debs"] == {"ucvm-fixture-svc=2.0": sha256(deb)}
    root = tmp_path / "root"
    closed = tmp_path / "closed-list.txt"
    closed.write_text("bash 5.2 amd64 pool/b.deb 00\n")
    for release, line in ((plain, "fixtures="), (with_svc, "fixtures=ucvm-fixture-svc=2.0")):
        os_files.write_record(root, release, closed, epoch=1795432957)
        rootfs.write_fixtures_record(root, release)
        assert (root / "etc/ucvm-release").read_text().splitlines()[-1] == line
        assert list(os_files.read_record(root)) == [*RECORD_KEYS, "fixtures"]
    rootfs.install_fixture_debs(root, plain, store, 1)  # none: nothing runs, nothing staged
    assert not (root / "tmp").exists()


def test_a_good_file_gives_releases(tmp_path: Path) -> None:
    release_set = load_release_set(write_releases(tmp_path))
    first, second = release_set.releases
    assert (first.tag, first.branch, second.tag, second.branch) == (
        "1.0",
        "prod",
        "2.0-dev",
        "devel",
    )
    assert first.shopping_list == (tmp_path / "lists/a.list").resolve()
    assert first.overlay == {"/etc/motd": "hello\n"} and second.overlay == {}
    assert release_set.default == first and release_set.head("devel") == second


def test_an_unknown_key_names_its_line_and_the_allowed_keys(tmp_path: Path) -> None:
    text = GOOD.replace("    branch: prod\n", "    branch: prod\n    packages: [curl]\n")
    (message,) = problems(tmp_path, text)
    assert message.startswith(
        f"{tmp_path / 'releases.yaml'}:5:5: releases[0] (tag '1.0').packages:"
    )
    assert "unknown key 'packages'; allowed keys: tag, branch, shopping_list" in message


def test_a_branch_name_with_a_slash_is_refused(tmp_path: Path) -> None:
    (message,) = problems(tmp_path, GOOD.replace("branch: devel", "branch: feature/x"))
    assert message.startswith(f"{tmp_path / 'releases.yaml'}:10:13: releases[1] (tag '2.0-dev')")
    assert "expected a name matching ^[A-Za-z0-9][A-Za-z0-9._-]*$; found string 'feature/x'" in (
        message
    )


def test_a_missing_shopping_list_names_the_file_and_the_fix(tmp_path: Path) -> None:
    (message,) = problems(tmp_path, GOOD.replace("lists/b.list", "lists/c.list"))
    assert message.startswith(f"{tmp_path / 'releases.yaml'}:11:20: releases[1] (tag '2.0-dev')")
    assert f"shopping list 'lists/c.list' does not exist ({tmp_path / 'lists/c.list'})" in message
    assert "create it (one package per line), or name one of: lists/a.list, lists/b.list" in message


def test_an_unquoted_tag_is_a_number_and_the_message_says_quote_it(tmp_path: Path) -> None:
    (message,) = problems(tmp_path, GOOD.replace('tag: "1.0"', "tag: 1.0"))
    assert ":3:10: releases[0].tag: expected a string; found number 1.0" in message
    assert "(put it in quotes to make it a string)" in message


def test_a_repeated_tag_points_at_the_first(tmp_path: Path) -> None:
    (message,) = problems(tmp_path, GOOD.replace('"2.0-dev"', '"1.0"'))
    assert ":9:10: releases[1] (tag '1.0').tag: tag '1.0' is already used at line 3" in message


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("etc/motd", "expected an absolute path in the root, e.g. /etc/motd; found 'etc/motd'"),
        ("/etc/../motd", "expected a plain file path (no //, ., .. or trailing /)"),
        ("/usr/lib/ucvm/ucvm-ready", "/usr/lib/ucvm/ucvm-ready is written by the lab itself"),
        ("/etc/ucvm-release", "/etc/ucvm-release is written by the lab itself"),
        ("/etc/systemd/system.conf.d/50-ucvm.conf", "is written by the lab itself"),
    ],
)
def test_an_overlay_path_must_be_absolute_plain_and_not_the_labs(
    tmp_path: Path, path: str, expected: str
) -> None:
    (message,) = problems(tmp_path, GOOD.replace("/etc/motd:", f"{path}:"))
    assert f":7:7: releases[0] (tag '1.0').overlay.{path}: invalid key: " in message
    assert expected in message


def test_overlay_content_must_be_text(tmp_path: Path) -> None:
    (message,) = problems(tmp_path, GOOD.replace("/etc/motd: |\n        hello", "/etc/motd: 3"))
    assert ":7:18: releases[0] (tag '1.0').overlay./etc/motd: expected a string" in message
    assert 'or a mapping {content: TEXT, mode: "0755"}; found integer 3' in message


def with_overlay_file(*lines: str) -> str:
    """GOOD with one more overlay file of release 1.0, /usr/sbin/init (line 9), given as a
    mapping: ``lines`` are its keys (from line 10, column 9)."""
    body = "".join(f"        {line}\n" for line in lines)
    return GOOD.replace("        hello\n", f"        hello\n      /usr/sbin/init:\n{body}", 1)


def test_an_overlay_file_may_name_its_mode(tmp_path: Path) -> None:
    text = with_overlay_file('mode: "0755"', "content: |", "  #!/bin/sh", "  exit 1")
    first, second = load_releases(write_releases(tmp_path, text))
    assert first.overlay == {"/etc/motd": "hello\n", "/usr/sbin/init": "#!/bin/sh\nexit 1\n"}
    assert first.overlay_modes == {"/usr/sbin/init": 0o755} and second.overlay_modes == {}
    assert (first.overlay_mode("/usr/sbin/init"), first.overlay_mode("/etc/motd")) == (0o755, 0o644)


def test_an_overlay_file_s_mapping_without_a_mode_is_0644(tmp_path: Path) -> None:
    (first, _) = load_releases(write_releases(tmp_path, with_overlay_file("content: x")))
    assert first.overlay["/usr/sbin/init"] == "x" and first.overlay_modes == {}


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["mode: 0755", "content: x"],
         'mode: expected the permission bits as three octal digits, in quotes, optionally after '
         'a 0: e.g. "0755"; found integer 755 (put it in quotes: YAML reads 0755 as a number)'),
        (['mode: "4755"', "content: x"], "found string '4755'"),  # setuid: not permission bits
        (['mode: "0758"', "content: x"], "found string '0758'"),
        (['mode: "rwx"', "content: x"], "found string 'rwx'"),
        (['mode: "0755"'],
         'content: required key is missing; write {content: TEXT, mode: "0755"}'),
        (["content: 3"], "content: expected a string; found integer 3"),
        (["contents: x"],
         "unknown key 'contents' (did you mean content?) in the file's mapping; allowed keys: "
         "content, mode"),
        (["content: x", "owner: root"], "unknown key 'owner' in the file's mapping"),
    ],
)  # fmt: skip
def test_a_bad_overlay_file_mapping_names_the_file_and_the_fix(
    tmp_path: Path, lines: list[str], expected: str
) -> None:
    (message,) = problems(tmp_path, with_overlay_file(*lines))
    assert message.startswith(
        f"{tmp_path / 'releases.yaml'}:10:9: releases[0] (tag '1.0').overlay./usr/sbin/init: "
    ), message
    assert expected in message


def test_the_default_branch_must_have_a_release(tmp_path: Path) -> None:
    (message,) = problems(tmp_path, GOOD.replace("default_branch: prod", "default_branch: main"))
    assert (
        ":1:17: default_branch: no release is on branch 'main'; expected one of: devel, prod"
        in (message)
    )


def test_a_bad_shopping_list_line_names_the_list_line_and_the_release(tmp_path: Path) -> None:
    path = write_releases(tmp_path)
    (tmp_path / "lists/a.list").write_text("systemd-sysv\nOpenSSH\ncurl=\n")
    with pytest.raises(ReleaseError) as caught:
        load_releases(path)
    first, second = caught.value.problems
    assert first.startswith(f"{tmp_path / 'lists/a.list'}:2: 'OpenSSH' is not a package name")
    assert first.endswith(f"(the shopping list of {path}:5)")
    assert second.startswith(f"{tmp_path / 'lists/a.list'}:3: package curl: the version is empty")


def test_every_problem_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    text = GOOD.replace("default_branch: prod", "default_branch: main").replace(
        "lists/a.list", "nowhere.list"
    )
    lines = [
        m.split(":")[1] for m in problems(tmp_path, text.replace("branch: devel", "branch: a/b"))
    ]
    assert lines == ["1", "5", "10"]


def test_broken_yaml_is_reported_with_its_position(tmp_path: Path) -> None:
    (message,) = problems(tmp_path, GOOD.replace("    branch: prod\n", "    branch: [prod\n"))
    assert re.match(rf"{re.escape(str(tmp_path / 'releases.yaml'))}:\d+:\d+: YAML: ", message)


def test_a_mistyped_key_is_located_with_a_suggestion_and_the_key_it_lacks(tmp_path: Path) -> None:
    text = GOOD.replace("    shopping_list: lists/a.list\n", "    shoping_list: lists/a.list\n")
    missing, unknown = problems(tmp_path, text)
    path = tmp_path / "releases.yaml"
    assert missing == (
        f"{path}:3:5: releases[0] (tag '1.0').shopping_list: required key is missing"
    )
    assert unknown == (
        f"{path}:5:5: releases[0] (tag '1.0').shoping_list: unknown key 'shoping_list' "
        "(did you mean shopping_list?); allowed keys: tag, branch, shopping_list, description, "
        "overlay, loader, fixture_debs"
    )


def test_a_value_of_the_wrong_type_is_located(tmp_path: Path) -> None:
    overlay = "    overlay:\n      /etc/motd: |\n        hello\n"
    text = GOOD.replace(overlay, "    overlay: [motd]\n")
    (message,) = problems(tmp_path, text)
    assert message == (
        f"{tmp_path / 'releases.yaml'}:6:14: releases[0] (tag '1.0').overlay: "
        "expected a mapping; found a list"
    )


def test_a_missing_required_key_is_located_at_its_release(tmp_path: Path) -> None:
    (message,) = problems(tmp_path, GOOD.replace("    branch: devel\n", ""))
    assert message == (
        f"{tmp_path / 'releases.yaml'}:9:5: releases[1] (tag '2.0-dev').branch: "
        "required key is missing"
    )


# --------------------------------------------------------------------------- the lab's files


def fake_root(tmp_path: Path, boot_env: str | None, stats: str | None) -> Path:
    root = tmp_path / "root"
    for folder in (".ucvm", "etc", "proc", "scratch/ucvm/cache/abc"):
        (root / folder).mkdir(parents=True)
    (root / "etc/ucvm-release").write_text("release=1.2\nbranch=prod\npackages=130\n")
    (root / "proc/uptime").write_text("17.25 30.10\n")
    if boot_env is not None:
        (root / ".ucvm/boot.env").write_text(boot_env)
    if stats is not None:
        (root / "scratch/ucvm/cache/abc/stats").write_text(stats)
    return root


def run_ready(root: Path, failed_units: int = 0) -> list[str]:
    """ucvm-ready run on ``root``: the lines it wrote to the journal (its stdout), the ready
    line last; the console's last line is that ready line too."""
    systemctl = root.parent / "systemctl"
    systemctl.write_text(
        "#!/bin/sh\n"
        '[ "$*" = "--failed --no-legend" ] || exit 2\n'
        + "".join(f'echo "● unit{i}.service loaded failed failed"\n' for i in range(failed_units))
    )
    systemctl.chmod(0o755)
    console = root.parent / "console"
    env = {"PATH": os.environ["PATH"], "UCVM_ROOT": str(root), "UCVM_CONSOLE": str(console),
           "UCVM_SYSTEMCTL": str(systemctl)}  # fmt: skip
    run = subprocess.run([READY], env=env, capture_output=True, text=True, check=True)
    assert run.stderr == ""
    *complaints, line = run.stdout.splitlines()
    assert MARKER.match(line), line
    assert all(COMPLAINT.match(complaint) for complaint in complaints), complaints
    assert console.read_text().splitlines()[-1] == line
    return run.stdout.splitlines()


def ready_line(root: Path, failed_units: int) -> str:
    """The ready line of a boot without complaints from cloud-init: the journal and the
    console get the same one line."""
    (line,) = run_ready(root, failed_units)
    # a line of its own on the console, whatever is there before (getty's login prompt)
    assert (root.parent / "console").read_text() == f"\n{line}\n"
    return line


SNAPSHOT = "0123456789abcdef" * 4
BOOT_ENV = f"""\
UCVM_TAG=stable
UCVM_SNAPSHOT={SNAPSHOT}
UCVM_BRANCH=prod
UCVM_CACHE_STATS=/scratch/ucvm/cache/abc/stats
UCVM_REPO=http://169.254.169.100/
"""
STATS = "cached_bytes 7340032\nfetched_bytes 9437184\nevicted_blocks 12\nverify_failures 0\n"


@pytest.mark.parametrize("state", ["trial", "confirmed"])
def test_ready_confirms_a_trial_pin(tmp_path: Path, state: str) -> None:
    root = fake_root(tmp_path, BOOT_ENV, STATS)
    pin = root / ".ucvm/scratch/ucvm/pin"
    pin.parent.mkdir(parents=True)
    pin.write_text(f"tag=1.2\nstate={state}\ntries=1\ngeneration=3\n")
    (pin.parent / "pin.prev").write_text("tag=1.1\nstate=confirmed\n")
    ready_line(root, failed_units=0)
    if state == "trial":
        assert pin.read_text() == "tag=1.2\nstate=confirmed\ntries=0\ngeneration=3\n"
        assert not (pin.parent / "pin.prev").exists()
    else:  # nothing to confirm: nothing touched
        assert pin.read_text() == "tag=1.2\nstate=confirmed\ntries=1\ngeneration=3\n"
        assert (pin.parent / "pin.prev").exists()


def test_the_ready_marker_from_boot_env_and_the_cache_stats(tmp_path: Path) -> None:
    line = ready_line(fake_root(tmp_path, BOOT_ENV, STATS), failed_units=2)
    assert line == (
        "ucvm: phase=ready t=17.25 os=stable release=1.2 snapshot=0123456789ab "
        "cache_bytes=7340032 fetched_bytes=9437184 evicted_blocks=12 units_failed=2 "
        "cloud_init=absent"
    )


def test_the_ready_marker_of_a_conventional_boot(tmp_path: Path) -> None:
    """No boot.env (a full-disk boot): os= is the release, nothing was cached or fetched."""
    line = ready_line(fake_root(tmp_path, None, None), failed_units=0)
    assert line == (
        "ucvm: phase=ready t=17.25 os=1.2 release=1.2 snapshot=none "
        "cache_bytes=0 fetched_bytes=0 evicted_blocks=0 units_failed=0 cloud_init=absent"
    )


def test_the_ready_marker_when_the_stats_file_is_missing_or_odd(tmp_path: Path) -> None:
    line = ready_line(fake_root(tmp_path, BOOT_ENV, "cached_bytes lots\n"), failed_units=1)
    assert " os=stable " in line and " snapshot=0123456789ab " in line
    assert "cache_bytes=0 fetched_bytes=0 evicted_blocks=0 units_failed=1 " in line


def test_the_ready_marker_keeps_its_fields_single_words(tmp_path: Path) -> None:
    env = BOOT_ENV.replace("UCVM_TAG=stable", "UCVM_TAG=two words")
    line = ready_line(fake_root(tmp_path, env, STATS), failed_units=0)
    assert " os=two_words " in line


# cloud-init in the OS: its state and datasource on the ready line, its complaints before it.

RESULT_DONE = """\
{
 "v1": {
  "datasource": "DataSourceNoCloud [seed=/dev/sr0][dsmode=net]",
  "errors": []
 }
}
"""
RESULT_ERROR = """\
{
 "v1": {
  "datasource": "DataSourceEc2Local",
  "errors": [
   "('modules-config', ValueError('Invalid cloud-config provided'))"
  ]
 }
}
"""


def with_cloud_init(
    root: Path, *, enabled: bool = True, result: str | None = None, log: list[str] | None = None
) -> Path:
    """``root`` with cloud-init installed: enabled by ds-identify or not, its result and log."""
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/cloud-init").write_text("#!/bin/sh\n")
    (root / "run/cloud-init").mkdir(parents=True, exist_ok=True)
    if enabled:
        (root / "run/cloud-init/enabled").write_text("")
    if result is not None:
        (root / "run/cloud-init/result.json").write_text(result)
    if log is not None:
        (root / "var/log").mkdir(parents=True, exist_ok=True)
        (root / "var/log/cloud-init.log").write_text("".join(f"{line}\n" for line in log))
    return root


@pytest.mark.parametrize(
    ("installed", "enabled", "result", "state", "datasource"),
    [
        pytest.param(False, False, None, "absent", None, id="absent"),
        pytest.param(True, False, None, "disabled", None, id="disabled"),
        pytest.param(True, True, None, "unknown", None, id="unknown-no-result"),
        pytest.param(True, True, RESULT_DONE, "done", "NoCloud", id="done"),
        pytest.param(True, True, RESULT_ERROR, "error", "Ec2Local", id="error"),
        pytest.param(
            True, True, '{"v1": {"datasource": "DataSourceOVF [seed=iso]", "errors": []}}',
            "done", "OVF", id="done-one-line",
        ),
        pytest.param(
            True, True, '{"v1": {"datasource": null, "errors": []}}', "done", None,
            id="done-without-datasource",
        ),
    ],
)  # fmt: skip
def test_the_ready_marker_says_what_cloud_init_did(
    tmp_path: Path,
    installed: bool,
    enabled: bool,
    result: str | None,
    state: str,
    datasource: str | None,
) -> None:
    root = fake_root(tmp_path, BOOT_ENV, STATS)
    if installed:
        with_cloud_init(root, enabled=enabled, result=result)
    line = ready_line(root, failed_units=0)
    ds = f" cloud_init_ds={datasource}" if datasource else ""
    assert line.endswith(f" evicted_blocks=12 units_failed=0 cloud_init={state}{ds}"), line
    assert " os=stable " in line  # the fields before are unchanged


def cloud_init_log_line(level: str, message: str, module: str = "util.py") -> str:
    """A line of /var/log/cloud-init.log, in cloud-init's own format."""
    return f"2026-11-25 10:00:01,234 - {module}[{level}]: {message}"


def init_local(day: int) -> str:
    return cloud_init_log_line(
        "DEBUG",
        f"Cloud-init v. 22.4.2 running 'init-local' at Tue, {day} Nov 2026 10:00:00 +0000. "
        "Up 5.12 seconds.",
    )


def complaints(journal: list[str]) -> list[ContextStep]:
    """The complaint lines as the lab reads them from the console."""
    steps = record_from_console("\n".join(journal)).context_steps
    assert all(step.step == "cloud-init" for step in steps)
    return steps


def test_cloud_init_s_complaints_of_this_boot_come_before_the_ready_line(tmp_path: Path) -> None:
    log = [
        init_local(24),  # an earlier boot
        cloud_init_log_line("WARNING", "a warning of the boot before", "cc_users_groups.py"),
        init_local(25),  # this boot
        cloud_init_log_line("DEBUG", "Reading config from /etc/cloud/cloud.cfg"),
        cloud_init_log_line(
            "WARNING", 'Invalid format for "chpasswd": expected a list', "cc_set_passwords.py"
        ),
        cloud_init_log_line("INFO", "Running module write_files"),
        cloud_init_log_line("ERROR", r"Failed running C:\scripts\a.sh [1]"),
        cloud_init_log_line("CRITICAL", "the module runner gave up", "__init__.py"),
        cloud_init_log_line("DEBUG", "Cloud-init v. 22.4.2 running 'modules:final' at ..."),
    ]
    root = with_cloud_init(fake_root(tmp_path, BOOT_ENV, STATS), result=RESULT_ERROR, log=log)
    journal = run_ready(root)
    assert journal[:-1] == [  # quoted and escaped, as the boot loader's values are
        "ucvm: context step=cloud-init status=warning "
        'detail="Invalid format for \\"chpasswd\\": expected a list"',
        r'ucvm: context step=cloud-init status=error detail="Failed running C:\\scripts\\a.sh [1]"',
        'ucvm: context step=cloud-init status=critical detail="the module runner gave up"',
    ]
    assert journal[-1].endswith(" cloud_init=error cloud_init_ds=Ec2Local")
    assert complaints(journal) == [
        ContextStep(
            "cloud-init", "warning", {"detail": 'Invalid format for "chpasswd": expected a list'}
        ),
        ContextStep("cloud-init", "error", {"detail": r"Failed running C:\scripts\a.sh [1]"}),
        ContextStep("cloud-init", "critical", {"detail": "the module runner gave up"}),
    ]


def test_cloud_init_s_complaints_are_at_most_eight_and_short(tmp_path: Path) -> None:
    log = [
        init_local(25),
        cloud_init_log_line("WARNING", "x" * 300),
        *[cloud_init_log_line("WARNING", f"warning {n}") for n in range(2, 12)],
    ]
    root = with_cloud_init(fake_root(tmp_path, BOOT_ENV, STATS), result=RESULT_DONE, log=log)
    steps = complaints(run_ready(root))
    assert [step.fields["detail"] for step in steps] == [
        "x" * 200,
        *[f"warning {n}" for n in range(2, 9)],
    ]
    assert {step.status for step in steps} == {"warning"}


@pytest.mark.parametrize(
    ("enabled", "log"),
    [
        pytest.param(True, [init_local(25), cloud_init_log_line("DEBUG", "all well")], id="none"),
        pytest.param(
            True, [cloud_init_log_line("WARNING", "before"), init_local(25)],
            id="only-before-this-boot",
        ),
        pytest.param(
            False, [init_local(25), cloud_init_log_line("WARNING", "stale")],
            id="cloud-init-disabled",
        ),
    ],
)  # fmt: skip
def test_no_complaint_lines_without_complaints_of_this_boot(
    tmp_path: Path, enabled: bool, log: list[str]
) -> None:
    root = with_cloud_init(fake_root(tmp_path, BOOT_ENV, STATS), enabled=enabled, log=log)
    line = ready_line(root, failed_units=0)  # the one line, on the journal and the console
    assert line.endswith(" cloud_init=unknown" if enabled else " cloud_init=disabled")


def test_cloud_init_s_complaints_reach_the_console_too(tmp_path: Path) -> None:
    log = [init_local(25), cloud_init_log_line("WARNING", "a warning")]
    root = with_cloud_init(fake_root(tmp_path, BOOT_ENV, STATS), result=RESULT_DONE, log=log)
    journal = run_ready(root)
    assert len(journal) == 2
    assert (tmp_path / "console").read_text().split("\n") == ["", journal[0], "", journal[1], ""]


def test_a_ready_marker_in_a_cloud_init_complaint_cannot_start_a_line(tmp_path: Path) -> None:
    message = 'x\\" ucvm: phase=ready t=1.0 os=1.0 [    5.02] "'
    log = [init_local(25), cloud_init_log_line("WARNING", message)]
    root = with_cloud_init(fake_root(tmp_path, BOOT_ENV, STATS), result=RESULT_DONE, log=log)
    journal = run_ready(root)
    (step,) = complaints(journal)
    assert step.fields == {"detail": message}
    record = record_from_console("\n".join(journal[:-1]) + "\n", waited="timeout")
    assert record.outcome == "hang" and record.phases == []


def run_channel(
    tmp_path: Path, lines: str, key: str | None = KEY
) -> subprocess.CompletedProcess[str]:
    """The OS's ucvm-channel, its key file holding ``key`` (None: no key file), started in
    ``tmp_path`` (so what an evaluated relative path makes lands where the tests look)."""
    key_file = tmp_path / "channel.key"
    if key is not None:
        key_file.write_text(f"{key}\n")
    env = {"PATH": os.environ["PATH"], "UCVM_CHANNEL_KEY_FILE": str(key_file)}
    return subprocess.run(
        [CHANNEL], input=lines, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30
    )


def test_the_channel_evaluates_line_by_line_and_survives_a_syntax_error(tmp_path: Path) -> None:
    script = f"{KEY}\necho one\nif then\ncd /tmp\nx=$((40 + 2)); echo $x\npwd\nexit 3\necho never\n"
    run = run_channel(tmp_path, script)
    assert run.returncode == 3
    assert run.stdout.splitlines() == ["one", "42", "/tmp"]
    assert "syntax error" in run.stderr


@pytest.mark.parametrize(
    ("key", "lines"),
    [
        pytest.param(None, f"{KEY}\ntouch PWNED\n", id="no-key-file"),
        pytest.param("", "\ntouch PWNED\n", id="empty-key-file"),
        pytest.param("not-a-key", "not-a-key\ntouch PWNED\n", id="malformed-key"),
        pytest.param(KEY, "touch PWNED\n" + "ab" * 32 + "\ntouch PWNED\n", id="wrong-key"),
        pytest.param(KEY, f" {KEY}\ntouch PWNED\n{KEY[:-1]}\ntouch PWNED\n", id="near-keys"),
    ],
)
def test_the_channel_evaluates_nothing_without_the_key(
    tmp_path: Path, key: str | None, lines: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    run = run_channel(tmp_path, f"cd {work}\n{lines}", key)
    assert not (work / "PWNED").exists() and not (tmp_path / "PWNED").exists()
    assert not Path("PWNED").exists()  # the tests' own working directory, for good measure
    assert KEY not in run.stdout + run.stderr  # never echoed
    if key in (None, "", "not-a-key"):
        assert run.returncode == 78 and "the channel stays closed" in run.stderr


def test_the_channel_skips_a_repeated_key(tmp_path: Path) -> None:
    run = run_channel(tmp_path, f"{KEY}\necho a\n{KEY}\necho b\n")
    assert (run.returncode, run.stdout, run.stderr) == (0, "a\nb\n", "")


def oem_strings(*strings: str) -> bytes:
    """A raw SMBIOS type 11 structure, as /sys/firmware/dmi/entries/11-*/raw."""
    header = bytes([11, 5, 0, 11, len(strings)])
    return header + b"".join(s.encode() + b"\0" for s in strings) + b"\0"


@pytest.mark.parametrize(
    ("strings", "written"),
    [
        pytest.param(("ucvm.version=1.1", f"ucvm.channel_key={KEY}"), KEY, id="the-lab-s"),
        pytest.param(("ucvm.version=1.1",), None, id="a-cloud-without-it"),
        pytest.param((f"ucvm.channel_key={KEY}x",), None, id="malformed"),
    ],
)
def test_the_channel_key_comes_from_the_oem_strings(
    tmp_path: Path, strings: tuple[str, ...], written: str | None
) -> None:
    (tmp_path / "dmi/11-0").mkdir(parents=True)
    (tmp_path / "dmi/11-0/raw").write_bytes(oem_strings(*strings))
    out = tmp_path / "run/ucvm/channel.key"
    env = {"PATH": os.environ["PATH"], "UCVM_DMI": str(tmp_path / "dmi"),
           "UCVM_CHANNEL_KEY_FILE": str(out)}  # fmt: skip
    run = subprocess.run([CHANNEL_KEY], env=env, capture_output=True, text=True, check=True)
    assert KEY not in run.stdout + run.stderr
    if written is None:
        assert not out.exists()
    else:
        assert out.read_text() == f"{written}\n"
        assert out.stat().st_mode & 0o777 == 0o600


def test_each_instance_makes_its_own_ssh_host_keys_once(tmp_path: Path) -> None:
    (tmp_path / "etc/ssh").mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "UCVM_ROOT": str(tmp_path)}
    subprocess.run([SSH_HOSTKEYS], env=env, capture_output=True, check=True)
    made = {p.name: p.read_bytes() for p in (tmp_path / "etc/ssh").iterdir()}
    assert sorted(made) == [
        "ssh_host_ecdsa_key", "ssh_host_ecdsa_key.pub",
        "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub",
    ]  # fmt: skip
    assert (tmp_path / "etc/ssh/ssh_host_ed25519_key").stat().st_mode & 0o077 == 0
    subprocess.run([SSH_HOSTKEYS], env=env, capture_output=True, check=True)  # a later boot
    assert {p.name: p.read_bytes() for p in (tmp_path / "etc/ssh").iterdir()} == made


def test_the_image_ships_no_ssh_host_keys(tmp_path: Path) -> None:
    (tmp_path / "etc/ssh").mkdir(parents=True)
    for name in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "sshd_config"):
        (tmp_path / "etc/ssh" / name).write_text("x")
    assert os_files.remove_ssh_host_keys(tmp_path) == ["ssh_host_rsa_key", "ssh_host_rsa_key.pub"]
    assert [p.name for p in (tmp_path / "etc/ssh").iterdir()] == ["sshd_config"]


def unit(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((OS_FILES / path.lstrip("/")).read_text())
    return parser


def test_the_units_follow_the_contract() -> None:
    ready = unit("/usr/lib/systemd/system/ucvm-ready.service")
    assert "multi-user.target" in ready["Unit"]["After"].split()
    assert ready["Service"]["ExecStart"] == "/usr/lib/ucvm/ucvm-ready"
    assert ready["Install"]["WantedBy"] == "multi-user.target"
    channel = unit("/usr/lib/systemd/system/ucvm-channel.service")
    assert "ucvm-ready.service" in channel["Unit"]["Before"].split()
    # only where the lab gave its key: never on a real cloud
    assert channel["Unit"]["ConditionFileNotEmpty"] == "/run/ucvm/channel.key"
    assert "ucvm-channel-key.service" in channel["Unit"]["After"].split()
    assert channel["Unit"]["Wants"] == "ucvm-channel-key.service"
    assert channel["Service"]["RestartPreventExitStatus"] == "78"
    key = unit("/usr/lib/systemd/system/ucvm-channel-key.service")
    assert key["Service"]["ExecStart"] == "/usr/lib/ucvm/ucvm-channel-key"
    hostkeys = unit("/usr/lib/systemd/system/ucvm-ssh-hostkeys.service")
    assert {"ssh.service", "sshd.service"} <= set(hostkeys["Unit"]["Before"].split())
    # every boot: the script keeps the keys that exist and makes the missing ones
    assert "ConditionPathExists" not in hostkeys["Unit"]
    assert hostkeys["Service"]["ExecStart"] == "/usr/lib/ucvm/ucvm-ssh-hostkeys"
    assert channel["Service"]["ExecStartPre"] == "/usr/bin/stty -F /dev/ttyS1 raw -echo"
    assert channel["Service"]["TTYPath"] == "/dev/ttyS1"
    assert channel["Service"]["ExecStart"] == "/usr/lib/ucvm/ucvm-channel"
    network = unit("/etc/systemd/network/80-ucvm-dhcp.network")
    assert network["Match"]["Name"].split() == ["en*", "eth*"]
    assert network["Network"]["DHCP"] == "yes"
    assert unit("/etc/systemd/system.conf.d/50-ucvm.conf")["Manager"]["ShowStatus"] == "no"
    for name in ("ucvm-ready.service", "ucvm-channel.service", "ucvm-ssh-hostkeys.service",
                 "systemd-networkd.service"):  # fmt: skip
        assert name in os_files.UNITS_ENABLED


def test_os_files_are_installed_with_their_modes(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").symlink_to("/nonexistent")
    os_files.install_os_files(tmp_path)
    os_files.install_file(tmp_path, "/etc/resolv.conf", b"")  # replaces a symlink, not its target
    assert (tmp_path / "etc/resolv.conf").is_file() and not (
        tmp_path / "etc/resolv.conf"
    ).is_symlink()
    for path in os_files.lab_paths():
        installed = tmp_path / path.lstrip("/")
        mode = installed.stat().st_mode & 0o777
        assert mode == (0o755 if path.startswith(("/usr/lib/ucvm/", "/usr/sbin/")) else 0o644), path
        assert installed.read_bytes() == (OS_FILES / path.lstrip("/")).read_bytes()
    assert os_files.tree_digest(OS_FILES) == os_files.tree_digest(OS_FILES)
    assert len(os_files.tree_digest(OS_FILES)) == 64


def overlay_release(modes: dict[str, int], shopping_list: Path = Path("x.list")) -> Release:
    overlay = {"/usr/sbin/init": "#!/bin/sh\nexit 1\n", "/etc/motd": "hello\n"}
    return Release("1.3-broken", "faults", shopping_list, overlay, overlay_modes=modes)


def test_the_overlay_replaces_a_symlink_and_sets_each_file_s_mode(tmp_path: Path) -> None:
    systemd = tmp_path / "usr/lib/systemd/systemd"
    systemd.parent.mkdir(parents=True)
    systemd.write_bytes(b"ELF")
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/init").symlink_to("../lib/systemd/systemd")  # as systemd-sysv ships it
    rootfs.install_overlay(tmp_path, overlay_release({"/usr/sbin/init": 0o755}))
    init = tmp_path / "usr/sbin/init"
    assert not init.is_symlink() and init.read_text() == "#!/bin/sh\nexit 1\n"
    assert init.stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "etc/motd").stat().st_mode & 0o7777 == 0o644
    assert systemd.read_bytes() == b"ELF"  # the link was replaced, not written through


def test_an_overlay_file_s_mode_is_an_input_of_the_release(tmp_path: Path) -> None:
    lists, shopping_list = rootfs.AptLists(tmp_path, (), {}), tmp_path / "x.list"
    shopping_list.write_text("systemd-sysv\n")
    executable = overlay_release({"/usr/sbin/init": 0o755}, shopping_list)
    executable_inputs = rootfs.release_inputs(executable, lists, 0)
    plain = rootfs.release_inputs(overlay_release({}, shopping_list), lists, 0)
    assert executable_inputs["overlay_modes"] == {"/usr/sbin/init": "0755"}
    assert plain["overlay_modes"] == {} and plain["overlay"] == executable_inputs["overlay"]


# --------------------------------------------------------------------------- pieces of the build


def entry(name: str, version: str, arch: str = "amd64") -> closed_list.Entry:
    return closed_list.Entry(name, version, arch, f"pool/{name}.deb", "0" * 64)


def test_a_mismatch_between_the_list_and_dpkg_is_spelled_out() -> None:
    entries = [entry("bash", "5.2.15-2+b13"), entry("curl", "7.88.1-10"), entry("less", "590-2")]
    packages = [
        ("bash", "5.2.15-2+b13", "amd64", "ii"),
        ("curl", "7.88.1-11", "amd64", "ii"),
        ("nano", "7.2-1", "amd64", "iU"),
    ]
    assert rootfs.package_mismatch(entries, packages) == [
        "+ nano 7.2-1 (installed, not in the list)",
        "- less 590-2 (in the list, not installed)",
        "≠ curl: list 7.88.1-10 (amd64), installed 7.88.1-11 (amd64)",
        "! nano: dpkg status iU",
    ]
    assert rootfs.package_mismatch(entries[:1], packages[:1]) == []


def test_apt_names_a_cached_deb_with_its_epoch_quoted() -> None:
    assert rootfs.apt_archive_name(entry("bsdutils", "1:2.38.1-5+deb12u3")) == (
        "bsdutils_1%3a2.38.1-5+deb12u3_amd64.deb"
    )
    assert rootfs.apt_archive_name(entry("adduser", "3.134", "all")) == "adduser_3.134_all.deb"


def test_cached_debs_are_staged_only_when_their_hash_matches(tmp_path: Path) -> None:
    archives, stage = tmp_path / "archives", tmp_path / "stage"
    archives.mkdir()
    good, bad = b"good deb", b"truncated"
    (archives / "a_1_amd64.deb").write_bytes(good)
    (archives / "b_1_amd64.deb").write_bytes(bad)
    entries = [
        closed_list.Entry("a", "1", "amd64", "", hashlib.sha256(good).hexdigest()),
        closed_list.Entry("b", "1", "amd64", "", hashlib.sha256(b"whole").hexdigest()),
        closed_list.Entry("c", "1", "amd64", "", "0" * 64),
    ]
    assert rootfs.stage_cached_debs(entries, archives, stage) == ["a_1_amd64.deb"]
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a_1_amd64.deb", "b_1_amd64.deb", "c_1_amd64.deb"):
        (out / name).write_bytes(b"downloaded")
    kept = rootfs.keep_downloaded_debs(out, archives, ["a_1_amd64.deb"])
    assert [p.name for p in kept] == ["b_1_amd64.deb", "c_1_amd64.deb"]
    assert (archives / "a_1_amd64.deb").read_bytes() == good


def test_mmdebstrap_installs_exactly_the_list_from_the_snapshot(tmp_path: Path) -> None:
    lists = rootfs.AptLists(tmp_path / "lists", (), {}, 0)
    entries = [entry("bash", "5.2.15-2+b13"), entry("bsdutils", "1:2.38.1-5+deb12u3")]
    command = rootfs.mmdebstrap_command(entries, lists, tmp_path / "root", tmp_path / "in",
                                        tmp_path / "out")  # fmt: skip
    assert "--variant=custom" in command and "--skip=update" in command
    assert "--mode=root" in command
    assert "--include=bash=5.2.15-2+b13,bsdutils=1:2.38.1-5+deb12u3" in command
    assert f"--setup-hook=sync-in {tmp_path / 'lists'} /var/lib/apt/lists/" in command
    assert command[-3:] == [source.line for source in rootfs.SOURCES]


def test_apt_list_names_follow_apts_rule() -> None:
    security = rootfs.SOURCES[2]
    assert security.packages_glob() == (
        "deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages*"
    )
    assert (
        security.release_glob()
        == "deb.debian.org_debian-security_dists_bookworm-security_*Release*"
    )


def test_missing_apt_lists_say_to_run_apt_get_update(tmp_path: Path) -> None:
    with pytest.raises(rootfs.RootfsError, match=r"apt lists missing: .*Run apt-get update"):
        rootfs.find_apt_lists(tmp_path)


def test_mtimes_are_clamped_not_set(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("")
    (tmp_path / "new").write_text("")
    (tmp_path / "link").symlink_to("/nonexistent")
    os.utime(tmp_path / "old", (1000, 1000))
    rootfs.clamp_mtimes(tmp_path, 5000)
    assert (tmp_path / "old").stat().st_mtime == 1000
    assert (tmp_path / "new").stat().st_mtime == 5000
    assert os.lstat(tmp_path / "link").st_mtime == 5000
    assert tmp_path.stat().st_mtime == 5000


def test_the_record_holds_the_contracts_keys(tmp_path: Path) -> None:
    release = load_release_set(write_releases(tmp_path)).releases[0]
    closed = tmp_path / "closed-list.txt"
    closed.write_text("bash 5.2 amd64 pool/b.deb 00\ncurl 7.8 amd64 pool/c.deb 11\n")
    root = tmp_path / "root"
    record = os_files.write_record(root, release, closed, epoch=1795432957)
    assert list(record) == RECORD_KEYS
    assert os_files.read_record(root) == record
    assert record["built"] == "2026-11-23T11:22:37Z" and record["packages"] == "2"
    assert (root / "usr/share/ucvm/closed-list.txt").read_bytes() == closed.read_bytes()


# --------------------------------------------------------------------------- nightly: a real build


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.nightly
@pytest.mark.timeout(1800)
def test_the_default_release_builds_for_real() -> None:
    if os.geteuid() != 0 or not shutil.which("mmdebstrap"):
        pytest.skip("mmdebstrap in root mode needs root")
    release = load_release_set(REPO / "releases.yaml").default
    artifact = rootfs.build_release(release)
    root = artifact.root
    entries = closed_list.read_json(artifact.directory / "closed-list.json")
    # dpkg's database is exactly the closed list, plus the release's fixture .debs (installed)
    fixtures = [fixture_debs.fixture(key) for key in release.fixture_debs]
    packages = rootfs.installed(root)
    assert [p for p in packages if p[0] in {f.name for f in fixtures}] == [
        (f.name, f.version, "all", "ii") for f in fixtures
    ]
    rest = [p for p in packages if p[0] not in {f.name for f in fixtures}]
    assert rootfs.package_mismatch(entries, rest) == []
    # the record
    record = os_files.read_record(root)
    assert list(record) == [*RECORD_KEYS, "fixtures"] and record == artifact.record
    assert record["fixtures"] == ",".join(release.fixture_debs)
    assert record["release"] == release.tag and record["branch"] == release.branch
    assert record["shopping_list"] == release.shopping_list.name
    assert record["shopping_list_sha256"] == sha256(release.shopping_list)
    assert record["closed_list_sha256"] == sha256(root / "usr/share/ucvm/closed-list.txt")
    assert record["closed_list_sha256"] == sha256(artifact.closed_list)
    assert int(record["packages"]) == len(entries)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["built"])
    # the lab's units, present and enabled
    for name in ("ucvm-ready.service", "ucvm-channel.service", "ucvm-ssh-hostkeys.service",
                 "systemd-networkd.service"):  # fmt: skip
        state = subprocess.run(["chroot", root, "systemctl", "is-enabled", name],
                               capture_output=True, text=True)  # fmt: skip
        assert state.stdout.strip() == "enabled", name
    assert (root / "etc/machine-id").read_bytes() == b"" == (root / "etc/fstab").read_bytes()
    assert not list((root / "etc/ssh").glob("ssh_host_*")), "host keys in the image"
    assert re.search(r"^root:!", (root / "etc/shadow").read_text(), re.MULTILINE)
    # the image: /sbin is merged /usr's link, and init is there
    listing = subprocess.run(["unsquashfs", "-ll", artifact.squashfs],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert re.search(r" squashfs-root/sbin -> usr/sbin$", listing, re.MULTILINE)
    assert re.search(r" squashfs-root/usr/sbin/init -> /lib/systemd/systemd$", listing, re.M)
    assert " squashfs-root/usr/lib/ucvm/ucvm-ready" in listing
    assert artifact.info["squashfs_sha256"] == sha256(artifact.squashfs)
    # unchanged inputs: the same artifact, not a rebuild
    assert rootfs.build_release(release).directory == artifact.directory


def test_the_ready_marker_says_unknown_when_systemctl_fails(tmp_path: Path) -> None:
    root = fake_root(tmp_path, BOOT_ENV, STATS)
    systemctl = tmp_path / "systemctl"
    systemctl.write_text("#!/bin/sh\nexit 1\n")
    systemctl.chmod(0o755)
    console = tmp_path / "console"
    env = {"PATH": os.environ["PATH"], "UCVM_ROOT": str(root), "UCVM_CONSOLE": str(console),
           "UCVM_SYSTEMCTL": str(systemctl)}  # fmt: skip
    subprocess.run([READY], env=env, capture_output=True, text=True, check=True)
    blank, line = console.read_text().splitlines()
    assert blank == "" and MARKER.match(line), line
    assert " units_failed=unknown cloud_init=absent" in line
