"""What every built OS release ships, read from its squashfs image itself (what the repository
publishes and anyone may fetch): no SSH host key, no shell on a serial port without the lab's
per-instance key, no getty on the lab's channel port, no account without a password."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from lab.build import rootfs

# What is read out of each image: the accounts, the units and what they enable, the lab's files.
EXTRACT = ("etc/shadow", "etc/systemd", "usr/lib/systemd/system", "usr/lib/ucvm")
CHANNEL_UNIT = "ucvm-channel.service"


@pytest.fixture(scope="module")
def images(
    os_releases: list[rootfs.ReleaseArtifact], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    """Release tag -> (its squashfs image, the paths of EXTRACT unpacked from it)."""
    unpacked = {}
    for release in os_releases:
        tag = release.tag
        into = tmp_path_factory.mktemp(f"release-{tag}") / "root"
        subprocess.run(
            ["unsquashfs", "-q", "-n", "-d", str(into), str(release.squashfs), *EXTRACT],
            check=True, capture_output=True,
        )  # fmt: skip
        unpacked[tag] = (release.squashfs, into)
    assert unpacked, "no release built"
    return unpacked


def test_no_release_ships_an_ssh_host_key(images: dict[str, tuple[Path, Path]]) -> None:
    found = {}
    for tag, (image, _) in images.items():
        listing = subprocess.run(["unsquashfs", "-l", str(image)], capture_output=True,
                                 text=True, check=True).stdout.splitlines()  # fmt: skip
        keys = [path for path in listing if path.startswith("squashfs-root/etc/ssh/ssh_host_")]
        if "squashfs-root/etc/ssh/sshd_config" in listing and not keys:  # made at first boot
            assert "squashfs-root/usr/lib/ucvm/ucvm-ssh-hostkeys" in listing, tag
        if keys:
            found[tag] = keys
    assert found == {}


def test_no_account_has_an_empty_password(images: dict[str, tuple[Path, Path]]) -> None:
    empty = {
        tag: [f[0] for line in (root / "etc/shadow").read_text().splitlines()
              if (f := line.split(":"))[1:2] == [""]]
        for tag, (_, root) in images.items()
    }  # fmt: skip
    assert all(not names for names in empty.values()), empty


def run_channel(root: Path, tmp_path: Path, key_file: Path) -> subprocess.CompletedProcess[str]:
    """The release's own ucvm-channel, run with bash on the host; its stdin a probe."""
    env = {"PATH": os.environ["PATH"], "UCVM_CHANNEL_KEY_FILE": str(key_file)}
    return subprocess.run(
        ["bash", str(root / "usr/lib/ucvm/ucvm-channel")],
        input=f"touch {tmp_path}/PWNED\n{'0' * 64}\ntouch {tmp_path}/PWNED\n",
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip


def test_the_channel_of_every_release_refuses_to_run_without_a_key(
    images: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    for tag, (_, root) in images.items():
        run = run_channel(root, tmp_path, tmp_path / "no-such-key")
        assert run.returncode == 78, (tag, run.stderr)
        assert not (tmp_path / "PWNED").exists(), f"{tag}: evaluated without a key"
        (tmp_path / "channel.key").write_text("5a" * 32 + "\n")
        run = run_channel(root, tmp_path, tmp_path / "channel.key")  # a key, the probe lacks it
        assert run.returncode == 0 and not (tmp_path / "PWNED").exists(), tag


def test_the_channel_unit_starts_only_with_the_lab_s_key(
    images: dict[str, tuple[Path, Path]],
) -> None:
    for tag, (_, root) in images.items():
        text = (root / "usr/lib/systemd/system" / CHANNEL_UNIT).read_text()
        assert "ConditionFileNotEmpty=/run/ucvm/channel.key" in text.splitlines(), tag


def enabled_units(root: Path) -> list[str]:
    """The names of the units something wants or requires: enabled in /etc/systemd/system, or
    statically in /usr/lib/systemd/system."""
    return sorted(
        link.name
        for system in (root / "etc/systemd/system", root / "usr/lib/systemd/system")
        for folder in system.glob("*.*")
        if folder.is_dir() and folder.suffix in (".wants", ".requires")
        for link in folder.iterdir()
    )


def test_no_release_enables_a_shell_or_getty_on_the_second_serial_port(
    images: dict[str, tuple[Path, Path]],
) -> None:
    found = {}
    for tag, (_, root) in images.items():
        units = enabled_units(root)
        assert CHANNEL_UNIT in units, tag  # the lab's channel, behind its key (above)
        bad = [u for u in units if re.fullmatch(r"(serial-)?getty@ttyS1\.service", u)]
        for name in units:
            unit = root / "usr/lib/systemd/system" / name
            if name != CHANNEL_UNIT and unit.is_file() and "ttyS1" in unit.read_text():
                bad.append(name)
        if bad:
            found[tag] = bad
    assert found == {}
