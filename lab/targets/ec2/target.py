"""The EC2 target: one account and region, the image's upload, the AMI and the instance.

The raw image goes up through the EBS direct APIs as a snapshot (lab.targets.ec2's docstring
says how and why), is registered as an AMI, and each instance is one RunInstances of it with
the context's user-data, which EC2 hands the guest through its instance metadata service.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from lab.build.context import Context, check_user_data_size
from lab.run import Run
from lab.targets.base import REAL_CONTEXT_RUN, LaunchRequest, Target, TargetError
from lab.targets.credentials import Secret, redact
from lab.targets.ec2.aws import (
    CLIENT_CONFIG,
    WAIT,
    aws_call,
    by_id,
    error_code,
    failure,
    lab_tags,
    secret_parts,
)
from lab.targets.ec2.instance import Ec2Instance
from lab.targets.ec2.sweep import sweep_ec2
from lab.targets.profiles import Profile

PLATFORM = "Amazon EC2"
IMDS_CHANNEL = "ec2-imds"
DEFAULT_REGION = "eu-central-1"
DEFAULT_INSTANCE_TYPE = "t3.micro"
ROOT_DEVICE = "/dev/xvda"
EBS_BLOCK_BYTES = 512 * 1024
GIB = 1024**3
UPLOAD_WORKERS = 8
# A snapshot just started may not be visible to PutSnapshotBlock for a while (coldsnap saw
# minutes): seconds to wait before each retry.
NEW_SNAPSHOT_RETRY_S = (2, 4, 8, 16, 32, 64)
NO_CREDENTIALS = (
    "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile), "
    "so nothing can run on EC2; the driver's API cycle (upload, register, run with "
    "user-data, console, terminate, sweep) is checked against moto's EC2 server in "
    "tests/test_ec2.py, which boots nothing"
)


def nonzero_blocks(path: Path) -> Iterator[tuple[int, bytes]]:
    """(index, 512 KiB block) for each block of the file holding data; the last one padded."""
    with path.open("rb") as image:
        index = 0
        while block := image.read(EBS_BLOCK_BYTES):
            if block.count(0) != len(block):
                yield index, block.ljust(EBS_BLOCK_BYTES, b"\0")
            index += 1


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Ec2Target(Target[Ec2Instance]):
    """One AWS account and region (or an emulator of them at ``endpoint_url``).

    Settings: ``region`` (else AWS_DEFAULT_REGION, else eu-central-1), ``endpoint_url``,
    ``instance_type`` (t3.micro), ``subnet_id`` (else the default VPC's). Credentials come from
    boto3's usual chain (environment, profile, instance role); only their non-secret parts
    are ever shown. A launch's user-data reaches the guest as EC2 hands it over, through the
    instance metadata service (the ``ec2-imds`` channel, the only one).
    """

    SETTINGS = frozenset(("region", "endpoint_url", "instance_type", "subnet_id"))
    IMAGE_FORMATS = frozenset(("raw",))
    CHANNELS = frozenset((IMDS_CHANNEL,))
    REFUSALS: ClassVar[Mapping[str, str]] = {
        "image_format": "EC2 boots the raw image (as an EBS snapshot), not {image_format!r}",
        "kernel_args": "EC2 boots the image through its firmware; direct kernel boot "
        "(kernel_args) is a local debugging aid that a cloud cannot do",
        "boot_args": "EC2 has no per-instance SMBIOS OEM strings to carry {boot_args}; "
        "the guest's /init does not read them from user-data either",
        "host_services": "host_services {host_services}: an EC2 instance cannot reach this "
        "host's 127.0.0.1; serve them from an address the cloud reaches",
        "channel": f"EC2 delivers user-data through {IMDS_CHANNEL} only, not {{channel}}",
        "metadata_delay_s": "EC2 runs its own instance metadata service, which the lab cannot "
        "slow down (metadata_delay_s)",
    }

    def __init__(self, name: str, profile: Profile, settings: dict[str, str], run: Run) -> None:
        super().__init__(name, profile, settings, run)
        self.region = (
            settings.get("region") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        )
        self.endpoint_url = settings.get("endpoint_url") or None
        self.instance_type = settings.get("instance_type") or DEFAULT_INSTANCE_TYPE
        self.subnet_id = settings.get("subnet_id") or None
        self._session: boto3.Session | None = None
        self._clients: dict[str, Any] = {}
        self._secrets: set[Secret] = set()

    def __repr__(self) -> str:
        return f"Ec2Target({self.name!r}, region={self.region!r}, endpoint={self.endpoint!r})"

    # --- clients ------------------------------------------------------------------------
    @property
    def session(self) -> boto3.Session:
        if self._session is None:  # it reads the AWS files: a missing profile fails here
            self._session = self.call(
                boto3.Session, what="reading the AWS configuration", region_name=self.region
            )
        return self._session

    def credentials(self) -> Any:
        """boto3's credentials, their secret parts remembered for redaction; None if none."""
        session = self.session
        credentials = self.call(session.get_credentials, what="reading the AWS credentials")
        self._secrets |= secret_parts(credentials)
        return credentials

    def client(self, service: str) -> Any:
        if service not in self._clients:
            if self.credentials() is None:
                raise TargetError(f"{self.name}: {NO_CREDENTIALS}")
            self._clients[service] = self.session.client(
                service, endpoint_url=self.endpoint_url, config=CLIENT_CONFIG
            )
        return self._clients[service]

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @property
    def ebs(self) -> Any:
        return self.client("ebs")

    @property
    def endpoint(self) -> str:
        return self.endpoint_url or f"https://ec2.{self.region}.amazonaws.com"

    def call(self, method: Callable[..., Any], /, **params: Any) -> Any:
        return aws_call(method, known_secrets=self._secrets, **params)

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def available(self) -> tuple[bool, str]:
        try:
            credentials = self.credentials()
        except TargetError as error:  # a broken profile, an unreadable file
            return False, str(error)
        if credentials is None:
            return False, NO_CREDENTIALS
        return True, f"EC2 {self.region} ({self.endpoint})"

    def sweep(self, run_root: Path) -> list[str]:
        return sweep_ec2(self.ec2, run_root)

    def offers_channel(self, channel: str) -> tuple[bool, str]:
        if channel != "ec2-imds":
            return False, "EC2 contextualizes through its instance metadata service only"
        return False, REAL_CONTEXT_RUN

    # --- launching ----------------------------------------------------------------------
    def _check(self, request: LaunchRequest) -> None:
        checked_user_data(request.context)  # before any API call, as EC2 itself would

    def _new_instance(self, name: str, profile: Profile, workdir: Path) -> Ec2Instance:
        return Ec2Instance(name, self, profile, workdir)

    def _start(self, instance: Ec2Instance, request: LaunchRequest) -> None:
        self._upload(instance, request.image.image("raw"))
        self._register(instance)
        self._run(instance, checked_user_data(request.context))

    def _upload(self, instance: Ec2Instance, raw: Path) -> None:
        tags = lab_tags(self.run, instance.name)
        started = self.call(
            self.ebs.start_snapshot,
            VolumeSize=max(1, math.ceil(raw.stat().st_size / GIB)),
            Tags=tags,
            Description=f"ucvm boot loader {raw.name} for {instance.name}",
            Timeout=60,  # minutes to finish it in; EC2 deletes a snapshot left pending longer
        )
        snapshot_id = started["SnapshotId"]
        instance.snapshot_ids.append(snapshot_id)
        self._tag_volume_behind(snapshot_id, tags)
        digests = self._put_blocks(snapshot_id, raw)
        self.call(
            self.ebs.complete_snapshot,
            SnapshotId=snapshot_id,
            ChangedBlocksCount=len(digests),
            Checksum=b64(hashlib.sha256(b"".join(digests)).digest()),
            ChecksumAlgorithm="SHA256",
            ChecksumAggregationMethod="LINEAR",
        )
        self.call(
            self.ec2.get_waiter("snapshot_completed").wait,
            what=f"waiting for snapshot {snapshot_id} to complete",
            Filters=by_id("snapshot-id", snapshot_id),
            WaiterConfig=WAIT,
        )

    def _tag_volume_behind(self, snapshot_id: str, tags: list[dict[str, str]]) -> None:
        """Tag the volume a snapshot names, if it exists: emulators make one (see above)."""
        found = self.call(self.ec2.describe_snapshots, Filters=by_id("snapshot-id", snapshot_id))
        volume_ids = [s["VolumeId"] for s in found["Snapshots"] if s.get("VolumeId")]
        if not volume_ids:
            return
        found = self.call(self.ec2.describe_volumes, Filters=by_id("volume-id", *volume_ids))
        for volume_id in [v["VolumeId"] for v in found["Volumes"]]:
            self.call(self.ec2.create_tags, Resources=[volume_id], Tags=tags)

    def _put_blocks(self, snapshot_id: str, raw: Path) -> list[bytes]:
        """Upload the image's blocks; their SHA256 digests in block order."""
        pool = ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="ucvm-ebs")
        try:
            return list(pool.map(lambda b: self._put_block(snapshot_id, *b), nonzero_blocks(raw)))
        finally:
            pool.shutdown(cancel_futures=True)

    def _put_block(self, snapshot_id: str, index: int, block: bytes) -> bytes:
        digest = hashlib.sha256(block).digest()
        params = dict(
            SnapshotId=snapshot_id,
            BlockIndex=index,
            BlockData=block,
            DataLength=len(block),
            Checksum=b64(digest),
            ChecksumAlgorithm="SHA256",
        )
        for wait_s in NEW_SNAPSHOT_RETRY_S:
            try:
                self.ebs.put_snapshot_block(**params)
                return digest
            except (ClientError, BotoCoreError) as error:
                if error_code(error) != "ResourceNotFoundException":
                    raise failure("put_snapshot_block", error, self._secrets) from None
            time.sleep(wait_s)
        self.call(self.ebs.put_snapshot_block, **params)  # the last try: its error is the answer
        return digest

    def _register(self, instance: Ec2Instance) -> None:
        tags = lab_tags(self.run, instance.name)
        registered = self.call(
            self.ec2.register_image,
            Name=instance.name,
            Description="ucvm boot loader (SeaBIOS -> SYSLINUX -> kernel + initramfs)",
            Architecture="x86_64",
            VirtualizationType="hvm",
            BootMode="legacy-bios",
            EnaSupport=True,
            RootDeviceName=ROOT_DEVICE,
            BlockDeviceMappings=[
                {
                    "DeviceName": ROOT_DEVICE,
                    "Ebs": {
                        "SnapshotId": instance.snapshot_ids[0],
                        "DeleteOnTermination": True,
                        "VolumeType": "gp3",
                    },
                }
            ],
            TagSpecifications=[{"ResourceType": "image", "Tags": tags}],
        )
        instance.image_id = registered["ImageId"]
        self.call(
            self.ec2.get_waiter("image_available").wait,
            what=f"waiting for image {instance.image_id} to become available",
            Filters=by_id("image-id", instance.image_id),
            WaiterConfig=WAIT,
        )
        mapped = self._snapshots_of(instance.image_id)
        instance.snapshot_ids += [s for s in mapped if s not in instance.snapshot_ids]
        self.call(
            self.ec2.create_tags, Resources=[instance.image_id, *instance.snapshot_ids], Tags=tags
        )

    def _snapshots_of(self, image_id: str) -> list[str]:
        images = self.call(self.ec2.describe_images, ImageIds=[image_id])["Images"]
        mappings = images[0].get("BlockDeviceMappings", []) if images else []
        return [m["Ebs"]["SnapshotId"] for m in mappings if m.get("Ebs", {}).get("SnapshotId")]

    def _run(self, instance: Ec2Instance, user_data: bytes | None) -> None:
        tags = lab_tags(self.run, instance.name)
        params: dict[str, Any] = dict(
            ImageId=instance.image_id,
            InstanceType=self.instance_type,
            MinCount=1,
            MaxCount=1,
            ClientToken=instance.uuid,  # a retried request starts no second instance
            InstanceInitiatedShutdownBehavior="terminate",  # a guest that powers off costs nothing
            TagSpecifications=[
                {"ResourceType": kind, "Tags": tags} for kind in ("instance", "volume")
            ],
        )
        if user_data is not None:
            params["UserData"] = user_data  # botocore base64-encodes it
        if self.subnet_id:
            params["SubnetId"] = self.subnet_id
        reservation = self.call(self.ec2.run_instances, **params)
        instance.instance_id = reservation["Instances"][0]["InstanceId"]
        instance.timeline.launched_at = time.monotonic()
        self.call(
            self.ec2.get_waiter("instance_running").wait,
            what=f"waiting for instance {instance.instance_id} to run",
            InstanceIds=[instance.instance_id],
            WaiterConfig=WAIT,
        )


def checked_user_data(context: Context | None) -> bytes | None:
    if context is None:
        return None
    if context.ssh_public_keys:
        raise TargetError(
            "EC2 takes SSH keys as key pairs, which this driver does not import: put them in "
            "the user-data's cloud-config (ssh_authorized_keys)"
        )
    check_user_data_size(PLATFORM, context.user_data)
    return context.user_data
