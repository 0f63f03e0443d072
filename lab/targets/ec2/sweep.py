"""The EC2 sweeper: what dead runs of this run root left in an account.

Resources are found by the tag ``ucvm-root=<run root>`` (those of other run roots are left
alone) and judged by the run id in ``ucvm-run``: a run whose directory is not alive is dead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import boto3

from lab.run import run_is_alive
from lab.targets.credentials import Secret
from lab.targets.ec2.aws import ROOT_TAG, RUN_TAG, WAIT, aws_call, secret_parts, tag_value


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
