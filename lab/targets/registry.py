"""From a matrix target to a driver object: the one place that knows every driver.

matrix.yaml's `driver:` is validated against DRIVERS' keys when the matrix is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lab import matrix
from lab.build import bootloader
from lab.targets.base import Target
from lab.targets.ec2 import Ec2Target
from lab.targets.libvirt import LibvirtTarget
from lab.targets.profiles import PROFILES
from lab.targets.run import Run
from lab.targets.vmware import VmwareTarget

TargetFactory = Callable[[matrix.Target, matrix.Settings, Run], Target]


def libvirt_target(spec: matrix.Target, settings: matrix.Settings, run: Run) -> Target:
    return LibvirtTarget(
        spec.name, PROFILES[spec.profile], dict(spec.settings), run,
        default_uri=settings.libvirt_uri, accel=settings.accel, scratch_gb=settings.scratch_gb,
    )  # fmt: skip


def ec2_target(spec: matrix.Target, settings: matrix.Settings, run: Run) -> Target:
    return Ec2Target(spec.name, PROFILES[spec.profile], dict(spec.settings), run)


def vmware_target(spec: matrix.Target, settings: matrix.Settings, run: Run) -> Target:
    return VmwareTarget(spec.name, PROFILES[spec.profile], dict(spec.settings), run)


DRIVERS: dict[str, TargetFactory] = {
    "libvirt": libvirt_target,
    "ec2": ec2_target,  # boto3; its API cycle is checked against moto's server in the tests
    "vmware": vmware_target,  # pyvmomi; checked against govmomi's vCenter simulator
}


def load_matrix(path: Path) -> matrix.Matrix:
    """matrix.yaml, validated against the drivers, profiles and image formats the lab has."""
    return matrix.load(
        path, profiles=PROFILES, drivers=DRIVERS, image_formats=bootloader.IMAGE_FORMATS
    )


def make_target(spec: matrix.Target, settings: matrix.Settings, run: Run) -> Target:
    return DRIVERS[spec.driver](spec, settings, run)
