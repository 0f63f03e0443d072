"""The boot loader's half of contextualization, run on the host: the initramfs's own scripts
(lab/build/initramfs/functions and context) under busybox sh, with busybox's applets and the
block client on PATH as in the initramfs, reading each channel exactly as the lab builds and
serves it (lab.build.context). In seconds, what the context suite checks in real guests."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from lab.build import context as ctx
from lab.build.blockd import build_blockd
from lab.services.metadata import MetadataService

BUSYBOX = Path("/bin/busybox")
USER_DATA = ctx.compose_user_data(
    "#cloud-config\nruncmd:\n  - [true]\n",
    {"cvmfs_tag": "1.1", "cvmfs_server": "169.254.169.101", "resize_rootfs": "off"},
)
CONTEXT = ctx.Context("i-0123456789abcdef0", "ucvm-host", USER_DATA, ("ssh-ed25519 AAAA test",))
MAC = "52:54:00:12:34:56"
MEDIA = [c for c in ctx.CHANNELS if ctx.channel_info(c).kind == "medium"]
SERVICES = [c for c in ctx.CHANNELS if ctx.channel_info(c).kind == "service"]


@pytest.fixture(scope="module")
def guest_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bin directory as the initramfs has it: busybox's applets and ucvm-blockd."""
    bin_dir = tmp_path_factory.mktemp("bin")
    listing = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for applet in listing.stdout.split():
        (bin_dir / applet).symlink_to(BUSYBOX)
    build_blockd(bin_dir)
    return bin_dir


def run_loader(guest_bin: Path, work: Path, body: str, **env: str) -> tuple[str, Path]:
    """Run ``body`` after sourcing the guest's functions; (console text, context dir).
    In a UTS namespace of its own: apply_hostname must not rename the host."""
    guest = resources.files("lab.build") / "initramfs"
    console, context_dir = work / "console", work / "context"
    script = f"""
. '{guest / "functions"}'
. '{guest / "context"}'
rm -rf "$CONTEXT"; mkdir -p "$CONTEXT"; : >"$CONTEXT/steps"
nic=eth0
{body}
"""
    environment = {
        "PATH": str(guest_bin),
        "UCVM_CONSOLE": str(console),
        "UCVM_CONTEXT_DIR": str(context_dir),
        **env,
    }
    console.write_text("")
    done = subprocess.run(
        ["unshare", "--uts", str(BUSYBOX), "sh", "-c", script],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return console.read_text(), context_dir


def unpack(iso: Path, into: Path) -> Path:
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(into)],
        check=True, capture_output=True,
    )  # fmt: skip
    return into


def check_applied(console: str, context_dir: Path) -> None:
    assert "step=hostname status=applied value=ucvm-host" in console
    assert "step=cvmfs_tag status=applied value=1.1" in console
    assert "step=cvmfs_server status=applied value=169.254.169.101" in console
    assert "step=resize_rootfs status=applied value=off" in console
    assert "status=rejected" not in console
    assert (context_dir / "user-data").read_bytes() == USER_DATA
    assert (context_dir / "cvmfs_tag").read_text().strip() == "1.1"


@pytest.mark.parametrize("channel", MEDIA)
def test_loader_reads_each_medium(channel: str, guest_bin: Path, tmp_path: Path) -> None:
    iso = ctx.build_medium(channel, CONTEXT, tmp_path, mac=MAC)
    medium = unpack(iso, tmp_path / "medium")
    console, context_dir = run_loader(
        guest_bin, tmp_path,
        f'echo "$(medium_channel "{ctx.read_volume_id(iso)}")" >"$CONTEXT/found"\n'
        f'read_channel {channel} "{medium}"\napply_hostname\napply_network\napply_ucernvm',
    )  # fmt: skip
    assert (context_dir / "found").read_text().strip() == channel  # found by its volume id
    check_applied(console, context_dir)
    assert "step=network status=applied mode=dhcp" in console


@pytest.mark.parametrize("channel", SERVICES)
def test_loader_reads_each_metadata_service(channel: str, guest_bin: Path, tmp_path: Path) -> None:
    with MetadataService(channel, CONTEXT, mac=MAC) as service:
        console, context_dir = run_loader(
            guest_bin, tmp_path, f"read_channel {channel}\napply_hostname\napply_ucernvm",
            UCVM_METADATA=service.url.rstrip("/"),
        )  # fmt: skip
    check_applied(console, context_dir)


def test_ec2_token_is_fetched_by_put_and_sent_with_every_get(
    guest_bin: Path, tmp_path: Path
) -> None:
    with MetadataService("ec2-imds", CONTEXT, mac=MAC) as service:
        run_loader(guest_bin, tmp_path, "read_channel ec2-imds", UCVM_METADATA=service.url)
        requests = list(service.requests)
    assert requests[0][:2] == ("PUT", "/latest/api/token")
    assert all(status == 200 for _, _, status in requests), requests


def test_stopped_service_fails_its_channel(guest_bin: Path, tmp_path: Path) -> None:
    with MetadataService("gce-metadata", CONTEXT, mac=MAC) as service:
        url = service.url
        service.stop()
        _, context_dir = run_loader(
            guest_bin, tmp_path,
            'read_channel gce-metadata; echo $? >"$CONTEXT/result"',
            UCVM_METADATA=url,
        )  # fmt: skip
    assert (context_dir / "result").read_text().strip() != "0"


def opennebula_medium(tmp_path: Path, user_data_line: str) -> Path:
    medium = tmp_path / "medium"
    medium.mkdir()
    (medium / "context.sh").write_text(
        "# Context variables generated by OpenNebula\n"
        "SET_HOSTNAME='ucvm-host'\n"
        f"USER_DATA='{user_data_line}'\n"
        "USERDATA_ENCODING='base64'\n"
    )
    return medium


def test_user_data_that_is_not_base64_is_rejected(guest_bin: Path, tmp_path: Path) -> None:
    medium = opennebula_medium(tmp_path, "!!! this is not base64 !!!")
    console, context_dir = run_loader(
        guest_bin, tmp_path, f'read_opennebula "{medium}"\napply_hostname\napply_ucernvm'
    )
    assert (
        'step=user-data status=rejected reason="USER_DATA of context.sh is not valid base64"'
        in (console)
    )
    assert "step=hostname status=applied value=ucvm-host" in console  # the rest still applies
    assert not (context_dir / "user-data").exists()


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("cvmfs_tag=1.1", "step=cvmfs_tag status=applied value=1.1 line=2"),
        ("cvmfs_tag=1.1;reboot", "characters outside"),
        ("resize_rootfs=maybe", 'reason="expected on or off"'),
        ("update_policy=stay", "step=update_policy status=applied value=stay line=2"),
        ("update_policy=never", 'reason="expected stay, rebase or diverge"'),
        ("colour=blue", 'key=colour reason="unknown key; known: cvmfs_server,cvmfs_tag,'),
        ("cvmfs_tag=", 'reason="empty value"'),
        ("cvmfs_tag 1.1", 'reason="not key=value: cvmfs_tag 1.1"'),
        ("cvmfs_server=hepvm.cern.ch", "this client resolves no names"),
        ("cvmfs_server=https://169.254.169.101/", "this client resolves no names"),
        ("cvmfs_server=169.254.169.101:8080", "step=cvmfs_server status=applied"),
        ("cvmfs_server=http://169.254.169.101/os", "value=http://169.254.169.101/os"),
        ("cvmfs_tag=-n", 'reason="expected a letter or digit first"'),
        ("cvmfs_server=http://169.254.169.101/$(reboot)", "characters outside"),
        ("cvmfs_tag cvmfs_branch=1.0", 'key="cvmfs_tag cvmfs_branch" reason="unknown key'),
    ],
)
def test_block_lines(block: str, expected: str, guest_bin: Path, tmp_path: Path) -> None:
    context_dir = tmp_path / "context"
    script = (
        f"printf '[ucernvm-begin]\\n%s\\n[ucernvm-end]\\n' '{block}' >\"$CONTEXT/user-data\"\n"
        "apply_ucernvm"
    )
    console, _ = run_loader(guest_bin, tmp_path, script)
    assert expected in console, console
    assert context_dir.exists()


def test_a_multi_line_user_data_of_context_sh_is_read_whole(
    guest_bin: Path, tmp_path: Path
) -> None:
    """OpenNebula writes a value that is not base64 as it is, newlines and all."""
    medium = tmp_path / "medium"
    medium.mkdir()
    user_data = "#!/bin/sh\necho it's\n[ucernvm-begin]\ncvmfs_tag=1.1\n[ucernvm-end]\n"
    quoted = ctx._sh_single_quoted(user_data)  # as OpenNebula quotes it: 'it'\''s'
    (medium / "context.sh").write_text(f"SET_HOSTNAME='ucvm-host'\nUSER_DATA={quoted}\nVMID='7'\n")
    console, context_dir = run_loader(
        guest_bin, tmp_path, f'read_opennebula "{medium}"\napply_hostname\napply_ucernvm'
    )
    assert (context_dir / "user-data").read_text() == user_data
    assert "step=cvmfs_tag status=applied value=1.1 line=4" in console
    assert "step=hostname status=applied value=ucvm-host" in console


@pytest.mark.parametrize(
    "value", ["plain", "two\nlines\n", "it's", "''", "a;b c", '$(reboot) `id` \\ "q"', "=x=\n\n"]
)
def test_context_sh_values_read_back_as_the_lab_writes_them(
    value: str, guest_bin: Path, tmp_path: Path
) -> None:
    (tmp_path / "context.sh").write_text(
        f"OTHER='x'\nVALUE={ctx._sh_single_quoted(value)}\nVALUE='second'\n"
    )
    run_loader(
        guest_bin, tmp_path, f'context_var VALUE <"{tmp_path / "context.sh"}" >"$CONTEXT/value"'
    )
    assert (tmp_path / "context" / "value").read_text() == value


def test_a_context_sh_quote_that_never_closes_is_rejected(guest_bin: Path, tmp_path: Path) -> None:
    medium = tmp_path / "medium"
    medium.mkdir()
    (medium / "context.sh").write_text("SET_HOSTNAME='ucvm-host'\nUSER_DATA='#!/bin/sh\necho\n")
    console, context_dir = run_loader(guest_bin, tmp_path, f'read_opennebula "{medium}"')
    assert 'reason="USER_DATA of context.sh: a quote that is never closed"' in console
    assert not (context_dir / "user-data").exists()


def test_only_the_first_block_counts(guest_bin: Path, tmp_path: Path) -> None:
    user_data = "[ucernvm-begin]\ncvmfs_tag=1.1\n[ucernvm-end]\n[ucernvm-begin]\ncvmfs_tag=2.0\n"
    (tmp_path / "user-data").write_text(user_data)
    console, context_dir = run_loader(
        guest_bin, tmp_path, f'cp "{tmp_path / "user-data"}" "$CONTEXT/user-data"\napply_ucernvm'
    )
    assert (context_dir / "cvmfs_tag").read_text() == "1.1\n"
    assert "value=2.0" not in console


def test_gzip_user_data_that_does_not_decompress_is_rejected(
    guest_bin: Path, tmp_path: Path
) -> None:
    (tmp_path / "broken.gz").write_bytes(gzip.compress(USER_DATA)[:40])
    console, context_dir = run_loader(
        guest_bin, tmp_path,
        f'cp "{tmp_path / "broken.gz"}" "$CONTEXT/user-data"\ndecompress_user_data',
    )  # fmt: skip
    assert "step=user-data status=rejected" in console
    assert not (context_dir / "user-data").exists()
    assert not (context_dir / "user-data.plain").exists()


def test_gzip_user_data_is_decompressed(guest_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "ud.gz").write_bytes(gzip.compress(USER_DATA))
    _, context_dir = run_loader(
        guest_bin, tmp_path, f'cp "{tmp_path / "ud.gz"}" "$CONTEXT/user-data"\ndecompress_user_data'
    )
    assert (context_dir / "user-data").read_bytes() == USER_DATA


def test_a_user_data_request_that_times_out_is_reported(guest_bin: Path, tmp_path: Path) -> None:
    with MetadataService("openstack-metadata", CONTEXT, mac=MAC, delay_s=0) as service:
        console, _ = run_loader(
            guest_bin, tmp_path,
            "CONTEXT_TIMEOUT_S=1\nmetadata_user_data /openstack/latest/user_data",
            UCVM_METADATA="http://127.0.0.1:9",  # nothing listens on the discard port
        )  # fmt: skip
    assert "step=user-data status=unreachable" in console
    assert service.requests == []


def test_hostname_that_is_not_one_is_rejected(guest_bin: Path, tmp_path: Path) -> None:
    console, _ = run_loader(
        guest_bin, tmp_path, 'echo "bad;name" >"$CONTEXT/hostname"\napply_hostname'
    )
    assert "step=hostname status=rejected" in console


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> None:
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert not os.path.exists(tmp_path)
