"""One EC2 instance: its console (EC2's sliding window, merged), its state, its clean-up.

EC2 throttles an account that asks often, so the console and the state are read at most
every API_POLL_S; ``destroy()`` removes the instance, its AMI, its snapshots and any volume
left, each step even if one before failed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from lab.targets.base import Instance, TargetError
from lab.targets.ec2.aws import RUN_TAG, WAIT
from lab.targets.profiles import Profile

if TYPE_CHECKING:
    from lab.targets.ec2.target import Ec2Target

CONSOLE_ANCHOR_CHARS = 200
# Instance.wait_for polls ten times a second; EC2 throttles an account that asks that often,
# and updates the console text far less often anyway.
API_POLL_S = 2.0


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
