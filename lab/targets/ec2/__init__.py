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

What runs here: the whole API cycle against moto's server (upload, register, run with
user-data, console, terminate, sweep), which boots nothing. Only a real account boots the
image, and a real context run also needs a repository and an SSH path the cloud can reach
(base.REAL_CONTEXT_RUN); the driver refuses the lab's 127.0.0.1 forwards.

- ``target``: Ec2Target (clients, the EBS upload, the AMI, RunInstances);
- ``instance``: Ec2Instance (console, state, destroy); ``sweep``: the sweeper;
- ``aws``: the calls, their errors, the redaction of secrets, the tags.
"""

from lab.targets.ec2.instance import Ec2Instance
from lab.targets.ec2.sweep import sweep_ec2
from lab.targets.ec2.target import Ec2Target

__all__ = ["Ec2Instance", "Ec2Target", "sweep_ec2"]
