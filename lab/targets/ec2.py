"""Amazon EC2 through boto3: the boot loader's raw image becomes an EBS snapshot and an AMI, and
each instance is one RunInstances of that AMI with the context's user-data.

The image goes up as a user without an S3 bucket or a vmimport role uploads one: through the
EBS direct APIs (StartSnapshot, PutSnapshotBlock with a SHA256 checksum per 512 KiB block,
CompleteSnapshot with the linear checksum of the blocks), as AWS's coldsnap does. All-zero blocks
are skipped: a new snapshot reads as zeros where nothing was written.

Every resource carries the tags ``ucvm-run=<run id>``, ``ucvm-root=<run root>`` and
``Name=<instance name>``; ``destroy()`` removes the instance's own, and ``sweep_ec2`` what dead
runs of the same run root left.

What moto 5.2.5's server (tests/test_ec2.py) does differently from EC2, and how the driver copes:
- StartSnapshot creates an EC2 volume behind the snapshot (EC2 makes none; its snapshots say
  ``vol-ffffffff``): the driver tags whatever volume the snapshot names, so it is removed too.
- StartSnapshot reports a BlockSize of 512; EC2's, and the only one the API takes, is 524288.
- RegisterImage ignores the block device mapping, root device, architecture, ENA and boot mode,
  and maps the AMI to a 15 GiB snapshot of its own: the driver deletes every snapshot the AMI
  maps to, beside its own. It also drops RegisterImage's TagSpecifications: create_tags follows.
- RunInstances gives the instance a blank 8 GiB root volume, not one made from the AMI.
- GetConsoleOutput returns a fixed old Linux boot text.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lab.build.bootloader import BootLoader
from lab.build.context import Context, check_user_data_size
from lab.run import Run, run_is_alive
from lab.targets.base import REAL_CONTEXT_RUN, Instance, Target, TargetError
from lab.targets.credentials import Secret, redact
from lab.targets.profiles import Profile

PLATFORM = "Amazon EC2"
IMDS_CHANNEL = "ec2-imds"
DEFAULT_REGION = "eu-central-1"
DEFAULT_INSTANCE_TYPE = "t3.micro"
RUN_TAG, ROOT_TAG = "ucvm-run", "ucvm-root"
ROOT_DEVICE = "/dev/xvda"
EBS_BLOCK_BYTES = 512 * 1024
GIB = 1024**3
UPLOAD_WORKERS = 8
# A snapshot just started may not be visible to PutSnapshotBlock for a while (coldsnap saw
# minutes): seconds to wait before each retry.
NEW_SNAPSHOT_RETRY_S = (2, 4, 8, 16, 32, 64)
WAIT = {"Delay": 5, "MaxAttempts": 120}  # boto3 waiters: up to 10 minutes
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8})
NOT_FOUND = {
    "InvalidInstanceID.NotFound",
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Unavailable",
    "InvalidSnapshot.NotFound",
    "InvalidVolume.NotFound",
}
NO_CREDENTIALS = (
    "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile), "
    "so nothing can run on EC2; the driver's API cycle (upload, register, run with "
    "user-data, console, terminate, sweep) is checked against moto's EC2 server in "
    "tests/test_ec2.py, which boots nothing"
)
CONSOLE_ANCHOR_CHARS = 200
# Instance.wait_for polls ten times a second; EC2 throttles an account that asks that often,
# and updates the console text far less often anyway.
API_POLL_S = 2.0


# --- credentials and errors ----------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """Takes known secrets out of botocore's debug records: it logs each request's headers,
    a session token among them, and the canonical request it signs."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[Secret] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


LOG_REDACTION = RedactingFilter()
for _logger in ("botocore.endpoint", "botocore.auth", "botocore.parsers"):
    logging.getLogger(_logger).addFilter(LOG_REDACTION)


def secret_parts(credentials: Any) -> set[Secret]:
    """The secret key and session token of botocore credentials (None: no credentials)."""
    if credentials is None:
        return set()
    frozen = credentials.get_frozen_credentials()
    found = {Secret(frozen.secret_key or ""), Secret(frozen.token or "")}
    LOG_REDACTION.secrets |= found
    return found


def aws_call(
    method: Callable[..., Any],
    /,
    *,
    what: str | None = None,
    missing_ok: bool = False,
    known_secrets: Iterable[Secret] = (),
    **params: Any,
) -> Any:
    """``method(**params)``; an error becomes a TargetError naming the call and what AWS said.
    With ``missing_ok``, a resource that is already gone gives None."""
    try:
        return method(**params)
    except (ClientError, BotoCoreError) as error:
        if missing_ok and error_code(error) in NOT_FOUND:
            return None
        # AWS's own message may quote the signed request, session token included: only the
        # redacted text goes on, without the original chained to it.
        raise failure(what or method.__name__, error, known_secrets) from None


def failure(what: str, error: Exception, known_secrets: Iterable[Secret]) -> TargetError:
    return TargetError(redact(f"{what} failed: {explain(error)}", known_secrets))


def error_code(error: Exception) -> str:
    return error.response["Error"].get("Code", "") if isinstance(error, ClientError) else ""


def explain(error: Exception) -> str:
    if isinstance(error, ClientError):
        details = error.response["Error"]
        return f"{details.get('Code', '?')}: {details.get('Message', '')}".strip()
    return str(error)


def lab_tags(run: Run, name: str) -> list[dict[str, str]]:
    return [
        {"Key": RUN_TAG, "Value": run.id},
        {"Key": ROOT_TAG, "Value": str(run.root)},
        {"Key": "Name", "Value": name},
    ]


def by_id(filter_name: str, *ids: str) -> list[dict[str, Any]]:
    """A filter, not a list of ids: a resource EC2 does not show yet (it is eventually
    consistent) then gives an empty answer, on which waiters wait, instead of an error."""
    return [{"Name": filter_name, "Values": list(ids)}]


def tag_value(resource: Mapping[str, Any], key: str) -> str:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), "")


# --- the image as EBS blocks ---------------------------------------------------------------


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


def merge_console(seen: str, latest: str) -> str:
    """Everything so far, from what we had and EC2's latest console text, which is a window
    (the last 64 KiB): the latest text is appended after the part both share."""
    if latest.startswith(seen):
        return latest
    anchor = latest[:CONSOLE_ANCHOR_CHARS]
    at = seen.rfind(anchor)
    while at >= 0:
        if latest.startswith(seen[at:]):
            return seen[:at] + latest
        at = seen.rfind(anchor, 0, at)
    return seen + latest  # nothing shared: the guest wrote more than a window since we looked


# --- the target ----------------------------------------------------------------------------


class Ec2Target(Target):
    """One AWS account and region (or an emulator of them at ``endpoint_url``).

    Settings: ``region`` (else AWS_DEFAULT_REGION, else eu-central-1), ``endpoint_url``,
    ``instance_type`` (t3.micro), ``subnet_id`` (else the default VPC's). Credentials come from
    boto3's usual chain (environment, profile, instance role); only their non-secret parts
    are ever shown.
    """

    SETTINGS = frozenset(("region", "endpoint_url", "instance_type", "subnet_id"))

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
    def launch(
        self,
        image: BootLoader,
        context: Context | None = None,
        profile: Profile | None = None,
        *,
        channel: str | None = None,
        image_format: str | None = None,
        kernel_args: str | None = None,
        boot_args: Sequence[str] = (),
        host_services: Mapping[str, int] | None = None,
    ) -> Ec2Instance:
        """As Target.launch; the context's user-data reaches the guest as EC2 hands it over,
        through the instance metadata service (the ``ec2-imds`` channel, the only one)."""
        refuse_unsupported(image_format, kernel_args, boot_args, host_services)
        if channel not in (None, IMDS_CHANNEL):
            raise TargetError(f"EC2 delivers user-data through {IMDS_CHANNEL} only, not {channel}")
        user_data = checked_user_data(context)  # before any API call, as EC2 itself would
        name = self.run.resource_name(self.name, secrets.token_hex(3))
        instance = Ec2Instance(name, self, profile or self.profile, self.run.dir / name)
        try:  # whatever stops the launch (an error, Ctrl-C), nothing of it may stay behind
            self._upload(instance, image.image("raw"))
            self._register(instance)
            self._run(instance, user_data)
        except BaseException as error:
            try:
                instance.destroy()
            except TargetError as cleanup:
                error.add_note(f"clean-up after the failed launch: {cleanup}")
            raise
        return instance

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


def refuse_unsupported(
    image_format: str | None,
    kernel_args: str | None,
    boot_args: Sequence[str],
    host_services: Mapping[str, int] | None,
) -> None:
    if image_format not in (None, "raw"):
        raise TargetError(f"EC2 boots the raw image (as an EBS snapshot), not {image_format!r}")
    if kernel_args is not None:
        raise TargetError(
            "EC2 boots the image through its firmware; direct kernel boot (kernel_args) is a "
            "local debugging aid that a cloud cannot do"
        )
    if boot_args:
        raise TargetError(
            f"EC2 has no per-instance SMBIOS OEM strings to carry {' '.join(boot_args)}; "
            "the guest's /init does not read them from user-data either"
        )
    if host_services:
        raise TargetError(
            f"host_services {dict(host_services)}: an EC2 instance cannot reach this host's "
            "127.0.0.1; serve them from an address the cloud reaches"
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


# --- the instance --------------------------------------------------------------------------


class Ec2Instance(Instance):
    target: Ec2Target

    def __init__(self, name: str, target: Ec2Target, profile: Profile, workdir: Path) -> None:
        super().__init__(name, target, profile, workdir)
        self.instance_id: str | None = None
        self.image_id: str | None = None
        self.snapshot_ids: list[str] = []  # the uploaded one first, then any the AMI maps to
        self._console = ""
        self._console_at = -API_POLL_S
        self._running = False
        self._running_at = -API_POLL_S
        self._clean = False

    def __repr__(self) -> str:
        return f"Ec2Instance({self.name!r}, {self.instance_id}, {self.target.region})"

    def console(self) -> str:
        if self.instance_id is None or time.monotonic() - self._console_at < API_POLL_S:
            return self._console
        output = self.target.call(
            self.target.ec2.get_console_output, InstanceId=self.instance_id, Latest=True
        )
        self._console_at = time.monotonic()
        latest = self.target.redact(output.get("Output", ""))  # botocore decoded the base64
        self._console = merge_console(self._console, latest)
        return self._console

    def is_running(self) -> bool:
        if self.instance_id is None:
            return False
        if time.monotonic() - self._running_at >= API_POLL_S:
            found = self.target.call(
                self.target.ec2.describe_instances, InstanceIds=[self.instance_id], missing_ok=True
            )
            reservations = (found or {}).get("Reservations", [])
            states = [i["State"]["Name"] for r in reservations for i in r["Instances"]]
            self._running, self._running_at = states == ["running"], time.monotonic()
        return self._running

    def destroy(self) -> None:
        """Terminate the instance, deregister its AMI, delete its snapshots and any volume
        left. Each step runs even if one before failed; what failed is raised at the end."""
        if self._clean:
            return
        failures = []
        for step in (
            self._terminate,
            self._deregister,
            self._delete_snapshots,
            self._delete_volumes,
        ):
            try:
                step()
            except TargetError as error:
                failures.append(str(error))
        if failures:
            raise TargetError(
                f"{self.name}: could not remove everything ({'; '.join(failures)}); "
                "`ucvm-lab sweep` removes the rest once this run has ended"
            )
        self._clean = True

    def _terminate(self) -> None:
        if self.instance_id is None:
            return
        ec2, call = self.target.ec2, self.target.call
        if call(ec2.terminate_instances, InstanceIds=[self.instance_id], missing_ok=True):
            call(
                ec2.get_waiter("instance_terminated").wait,
                what=f"waiting for instance {self.instance_id} to terminate",
                InstanceIds=[self.instance_id],
                WaiterConfig=WAIT,
            )
        self.instance_id = None

    def _deregister(self) -> None:
        if self.image_id is not None:
            self.target.call(
                self.target.ec2.deregister_image, ImageId=self.image_id, missing_ok=True
            )
            self.image_id = None

    def _delete_snapshots(self) -> None:
        for snapshot_id in list(self.snapshot_ids):
            self.target.call(
                self.target.ec2.delete_snapshot, SnapshotId=snapshot_id, missing_ok=True
            )
            self.snapshot_ids.remove(snapshot_id)

    def _delete_volumes(self) -> None:
        """Volumes of this instance still there: what EC2 does not delete on termination."""
        ec2, call = self.target.ec2, self.target.call
        filters = [
            {"Name": f"tag:{RUN_TAG}", "Values": [self.target.run.id]},
            {"Name": "tag:Name", "Values": [self.name]},
            {"Name": "status", "Values": ["available"]},  # in-use ones go with their instance
        ]
        for volume in call(ec2.describe_volumes, Filters=filters)["Volumes"]:
            call(ec2.delete_volume, VolumeId=volume["VolumeId"], missing_ok=True)


# --- the sweeper ---------------------------------------------------------------------------


def sweep_ec2(client_or_session: Any, run_root: Path) -> list[str]:
    """Remove the instances, AMIs, snapshots and volumes of dead runs under ``run_root``
    (tagged ``ucvm-root=<run_root>``; those of other run roots are left alone); what was
    removed, one line each. Takes an EC2 client or a boto3 Session."""
    if isinstance(client_or_session, boto3.Session):
        ec2 = aws_call(client_or_session.client, what="making an EC2 client", service_name="ec2")
        credentials = aws_call(client_or_session.get_credentials, what="reading AWS credentials")
    else:
        ec2 = client_or_session
        credentials = getattr(ec2, "_get_credentials", lambda: None)()  # private, may go
    known = secret_parts(credentials)
    sweep = Sweep(ec2, run_root, known)
    return sweep.instances() + sweep.images() + sweep.snapshots() + sweep.volumes()


class Sweep:
    """One sweep of an account: each method removes one kind of resource of dead runs."""

    def __init__(self, ec2: Any, run_root: Path, known_secrets: set[Secret]) -> None:
        self.ec2 = ec2
        self.run_root = run_root
        self.known_secrets = known_secrets
        self.ours = [{"Name": f"tag:{ROOT_TAG}", "Values": [str(run_root)]}]

    def call(self, method: Callable[..., Any], /, **params: Any) -> Any:
        return aws_call(method, known_secrets=self.known_secrets, **params)

    def dead(self, resource: Mapping[str, Any]) -> bool:
        run_id = tag_value(resource, RUN_TAG)
        return bool(run_id) and not run_is_alive(self.run_root / run_id)

    def describe(self, resource: Mapping[str, Any], kind: str, key: str) -> str:
        name, run_id = tag_value(resource, "Name"), tag_value(resource, RUN_TAG)
        return f"ec2 {kind} {resource[key]} ({name}, run {run_id})"

    def listed(self, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
        pages = self.ec2.get_paginator(operation).paginate(**params)
        items = self.call(pages.build_full_result, what=operation)[key]
        if operation == "describe_instances":
            items = [i for r in items for i in r["Instances"]]
        return [item for item in items if self.dead(item)]

    def instances(self) -> list[str]:
        alive_states = ["pending", "running", "stopping", "stopped", "shutting-down"]
        found = self.listed(
            "describe_instances",
            "Reservations",
            Filters=[*self.ours, {"Name": "instance-state-name", "Values": alive_states}],
        )
        if not found:
            return []
        ids = [i["InstanceId"] for i in found]
        self.call(self.ec2.terminate_instances, InstanceIds=ids)
        self.call(
            self.ec2.get_waiter("instance_terminated").wait,
            what="waiting for the swept instances to terminate",
            InstanceIds=ids,
            WaiterConfig=WAIT,
        )
        return [self.describe(i, "instance", "InstanceId") for i in found]

    def images(self) -> list[str]:
        found = self.listed("describe_images", "Images", Owners=["self"], Filters=self.ours)
        for image in found:
            self.call(self.ec2.deregister_image, ImageId=image["ImageId"], missing_ok=True)
        return [self.describe(i, "image", "ImageId") for i in found]

    def snapshots(self) -> list[str]:
        found = self.listed("describe_snapshots", "Snapshots", OwnerIds=["self"], Filters=self.ours)
        for snapshot in found:
            self.call(self.ec2.delete_snapshot, SnapshotId=snapshot["SnapshotId"], missing_ok=True)
        return [self.describe(s, "snapshot", "SnapshotId") for s in found]

    def volumes(self) -> list[str]:
        available = {"Name": "status", "Values": ["available"]}
        found = self.listed("describe_volumes", "Volumes", Filters=[*self.ours, available])
        for volume in found:
            self.call(self.ec2.delete_volume, VolumeId=volume["VolumeId"], missing_ok=True)
        return [self.describe(v, "volume", "VolumeId") for v in found]
