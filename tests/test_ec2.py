"""The EC2 driver against moto's server on 127.0.0.1 (real boto3 over HTTP, validation on):
a full launch and clean-up, user-data over EC2's limit, the sweeper, credentials that never
show, and no credentials at all."""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from lab.build.bootloader import BootLoader
from lab.build.context import Context, ContextError
from lab.run import Run, new_run_id
from lab.services.emulators import MotoServer
from lab.targets.base import TargetError
from lab.targets.ec2 import Ec2Instance, Ec2Target, sweep_ec2
from lab.targets.ec2.aws import RUN_TAG
from lab.targets.ec2.instance import merge_console
from lab.targets.ec2.target import EBS_BLOCK_BYTES
from lab.targets.profiles import PROFILES

REGION = "eu-central-1"
ACCESS_KEY = "AKIAUCVMLABTEST00001"
SECRET_KEY = "ucvm-lab-TEST-secret-9f3c1e7a-must-never-show"
SESSION_TOKEN = "ucvm-lab-TEST-session-token-4b2d70c1"
USER_DATA = b"#cloud-config\nhostname: ucvm-ec2\nruncmd:\n  - [echo, hello from user-data]\n"
MOTO_CONSOLE = "Linux version 2.6.16-xenU"  # the start of moto's fixed console text
NOTHING_LEFT: dict[str, list[str]] = {"instances": [], "images": [], "snapshots": [], "volumes": []}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    children = child_pids()
    server = MotoServer()
    with server:
        yield server
    assert child_pids() == children  # moto's process is gone, and with it its port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", urlsplit(server.url).port or 0), timeout=2)


def child_pids() -> set[str]:
    pid = os.getpid()
    return set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """Fake credentials in the environment, no AWS files, an empty moto account."""
    clear_aws_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    moto.reset()
    return moto


def clear_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    for variable, name in (
        ("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
        ("AWS_CONFIG_FILE", "config"),
    ):
        empty = tmp_path / f"aws-{name}"
        empty.write_text("")
        monkeypatch.setenv(variable, str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    live = Run(new_run_id(), tmp_path / "runs").hold()
    yield live
    live.release()


@pytest.fixture
def boot_loader(tmp_path: Path) -> BootLoader:
    """A 3 MiB "image" of real bytes: data in EBS blocks 0, 1 and 5 (the last one partial),
    zeros between, which the upload skips."""
    root = tmp_path / "bootloader"
    root.mkdir()
    kib = 1024
    data = os.urandom(700 * kib) + bytes(2048 * kib) + os.urandom(300 * kib)
    (root / "ucvm.raw").write_bytes(data)
    return BootLoader(root=root, kernel_release="test")


def ec2_target(moto: MotoServer, run: Run, **settings: str) -> Ec2Target:
    return Ec2Target("ec2", PROFILES["ec2"], {"endpoint_url": moto.url, **settings}, run)


@pytest.fixture
def target(aws_env: MotoServer, run: Run) -> Ec2Target:
    return ec2_target(aws_env, run)


# --- what the account holds ------------------------------------------------------------------


def leftovers(ec2: Any) -> dict[str, list[str]]:
    reservations = ec2.describe_instances()["Reservations"]
    return {
        "instances": [
            i["InstanceId"]
            for r in reservations
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        ],
        "images": [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]],
        "snapshots": [
            s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        ],
        "volumes": [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]],
    }


def tags(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def resources_of(ec2: Any, instance: Ec2Instance) -> list[dict[str, Any]]:
    """The instance, its AMI, its snapshots and its volumes, as EC2 describes them."""
    reservations = ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"]
    return [
        *reservations[0]["Instances"],
        *ec2.describe_images(ImageIds=[instance.image_id])["Images"],
        *ec2.describe_snapshots(SnapshotIds=instance.snapshot_ids)["Snapshots"],
        *ec2.describe_volumes(Filters=[{"Name": "tag:Name", "Values": [instance.name]}])["Volumes"],
    ]


def read_snapshot(ebs: Any, snapshot_id: str) -> dict[int, bytes]:
    """The blocks written to a snapshot, read back through the EBS direct APIs."""
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    return {
        block["BlockIndex"]: ebs.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=block["BlockIndex"], BlockToken=block["BlockToken"]
        )["BlockData"].read()
        for block in listed
    }


def record_requests(target: Ec2Target) -> list[tuple[str, dict[str, Any]]]:
    """(operation, parameters) of every request the target's clients make from now on."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append((model.name, dict(params)))

    for client in (target.ec2, target.ebs):
        client.meta.events.register("provide-client-params", record)
    return seen


# --- the tests -------------------------------------------------------------------------------


def test_a_launch_uploads_registers_runs_and_leaves_nothing(
    target: Ec2Target, boot_loader: BootLoader, run: Run
) -> None:
    requests = record_requests(target)
    raw = boot_loader.image("raw").read_bytes()
    context = Context(instance_id="i-ucvm-test", hostname="ucvm-ec2", user_data=USER_DATA)
    ec2 = target.ec2

    with target.launch(boot_loader, context) as instance:
        assert instance.is_running()
        user_data = ec2.describe_instance_attribute(
            InstanceId=instance.instance_id, Attribute="userData"
        )["UserData"]["Value"]
        assert base64.b64decode(user_data) == USER_DATA

        for resource in resources_of(ec2, instance):
            assert tags(resource)[RUN_TAG] == run.id
            assert tags(resource)["Name"] == instance.name

        uploaded = instance.snapshot_ids[0]
        register = next(params for name, params in requests if name == "RegisterImage")
        assert register["RootDeviceName"] == "/dev/xvda"
        assert register["BlockDeviceMappings"] == [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {"SnapshotId": uploaded, "DeleteOnTermination": True, "VolumeType": "gp3"},
            }
        ]
        # moto ignores that mapping and maps the AMI to a snapshot of its own: the driver
        # keeps every snapshot the AMI maps to, to delete it with the rest.
        image = ec2.describe_images(ImageIds=[instance.image_id])["Images"][0]
        assert {m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]} <= set(
            instance.snapshot_ids
        )

        blocks = read_snapshot(target.ebs, uploaded)
        assert sorted(blocks) == [0, 1, 5]  # the all-zero blocks were not sent
        padded = raw.ljust(6 * EBS_BLOCK_BYTES, b"\0")
        for index, block in blocks.items():
            assert block == padded[index * EBS_BLOCK_BYTES : (index + 1) * EBS_BLOCK_BYTES]

        assert instance.console().startswith(MOTO_CONSOLE)

    assert leftovers(ec2) == NOTHING_LEFT
    assert not instance.is_running()
    instance.destroy()  # idempotent
    assert not [t for t in threading.enumerate() if t.name.startswith("ucvm-ebs")]


def test_b_user_data_over_16_kib_is_refused_before_any_api_call(
    target: Ec2Target, boot_loader: BootLoader
) -> None:
    requests = record_requests(target)
    too_big = Context("i-ucvm-test", "ucvm-ec2", user_data=b"#" * (16 * 1024 + 1))

    with pytest.raises(ContextError, match=r"16 KiB"):
        target.launch(boot_loader, too_big)

    assert requests == []
    assert leftovers(target.ec2) == NOTHING_LEFT


@pytest.mark.parametrize(
    ("option", "why"),
    [
        ({"kernel_args": "ucvm.break=network"}, "direct kernel boot"),
        ({"host_services": {"169.254.169.100:80": 8080}}, "cannot reach this host's 127.0.0.1"),
        ({"boot_args": ("ucvm.version=1.1",)}, "no per-instance SMBIOS OEM strings"),
        ({"image_format": "qcow2"}, "raw image"),
        ({"channel": "nocloud"}, "through ec2-imds only"),
        (
            {"context": Context("i-ucvm-test", "ucvm-ec2", b"", ("ssh-ed25519 AAAA lab",))},
            "key pairs",
        ),
    ],
)
def test_what_a_cloud_cannot_do_is_refused_before_any_api_call(
    target: Ec2Target, boot_loader: BootLoader, option: dict[str, Any], why: str
) -> None:
    requests = record_requests(target)
    with pytest.raises(TargetError, match=why):
        target.launch(boot_loader, **option)
    assert requests == []


def test_c_sweeper_removes_a_dead_runs_resources_and_keeps_a_live_runs(
    aws_env: MotoServer,
    run: Run,
    boot_loader: BootLoader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead = Run(new_run_id() + "x", run.root)  # never held: nobody keeps it alive
    elsewhere = Run(new_run_id() + "y", run.root.parent / "other-root")  # dead, another root
    kept = ec2_target(aws_env, run).launch(boot_loader)
    lost = ec2_target(aws_env, dead).launch(boot_loader)
    foreign = ec2_target(aws_env, elsewhere).launch(boot_loader)
    lost_ids = [lost.instance_id, lost.image_id, *lost.snapshot_ids]
    ec2 = kept.target.ec2

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env.url)  # the session's clients reach moto
    removed = sweep_ec2(boto3.Session(region_name=REGION), run.root)

    assert all(any(i in line for line in removed) for i in lost_ids), removed
    assert all(dead.id in line for line in removed), removed
    assert kept.is_running() and foreign.is_running()
    assert not lost.is_running()
    remaining = leftovers(ec2)
    assert set(remaining["images"]) == {kept.image_id, foreign.image_id}
    assert set(remaining["snapshots"]) == {*kept.snapshot_ids, *foreign.snapshot_ids}
    assert sweep_ec2(ec2, run.root) == []  # an EC2 client does as well as a session

    for instance in (lost, kept, foreign):
        instance.destroy()
    assert leftovers(ec2) == NOTHING_LEFT


def test_d_credentials_never_show(
    aws_env: MotoServer, run: Run, boot_loader: BootLoader, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # botocore's debug records: requests, signing, responses
    target = ec2_target(aws_env, run)
    shown = [repr(target), str(target), str(target.available())]
    with target.launch(boot_loader, Context("i-ucvm-test", "ucvm-ec2", USER_DATA)) as instance:
        shown += [repr(instance), str(instance), instance.console()]

    # An instance type that quotes the secret: moto's validation rejects it and repeats it in
    # its error message, as AWS repeats the signed request in a SignatureDoesNotMatch.
    failing = ec2_target(aws_env, run, instance_type=f"t3.{SECRET_KEY}")
    with pytest.raises(TargetError, match=r"run_instances failed: InvalidInstanceType") as failed:
        failing.launch(boot_loader)
    assert "t3.***" in str(failed.value)
    shown += [str(failed.value), *getattr(failed.value, "__notes__", [])]
    assert leftovers(target.ec2) == NOTHING_LEFT  # the failed launch removed what it made

    logged = [caplog.text, *(record.getMessage() for record in caplog.records)]
    assert any("CanonicalRequest" in text for text in logged)  # botocore's debug was captured
    for secret in (SECRET_KEY, SESSION_TOKEN):
        assert not [text for text in shown + logged if secret in text]


def test_e_not_available_without_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run: Run, boot_loader: BootLoader
) -> None:
    clear_aws_environment(monkeypatch, tmp_path)
    target = Ec2Target("ec2", PROFILES["ec2"], {"endpoint_url": "http://127.0.0.1:9"}, run)

    ok, why = target.available()

    assert not ok
    assert why.startswith("no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    with pytest.raises(TargetError, match="no AWS credentials"):
        target.launch(boot_loader)


def test_console_text_is_merged_from_ec2s_sliding_window() -> None:
    lines = [f"line {n}\n" for n in range(100)]
    first, later = "".join(lines[:60]), "".join(lines[30:90])  # the window moved on by 30 lines
    assert merge_console(first, later) == "".join(lines[:90])
    assert merge_console("", first) == first
    assert merge_console(first, first) == first
    assert merge_console("boot 1\n", "boot 2\n") == "boot 1\nboot 2\n"
