"""From a matrix target to a driver object: the one place that knows every driver.

matrix.yaml's `driver:` is validated against DRIVERS' keys when the matrix is loaded, each
target's `settings:` against its driver's SETTINGS, and `checks:` against the suites' CHECKS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from lab import known_issues, matrix
from lab.build import bootloader
from lab.run import Run
from lab.targets.base import Target
from lab.targets.ec2 import Ec2Target
from lab.targets.libvirt import LibvirtTarget
from lab.targets.profiles import PROFILES
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
SETTINGS: dict[str, frozenset[str]] = {
    "libvirt": LibvirtTarget.SETTINGS,
    "ec2": Ec2Target.SETTINGS,
    "vmware": VmwareTarget.SETTINGS,
}
"""The settings keys each driver takes (its Target class says)."""

CHECKS = ("boot", "reboot", "image_size", "context", "rebase")
"""The checks the suites mark their tests with (@pytest.mark.check(NAME)) or read."""
REQUIRED_CHECKS = ("image_size",)
"""Read whatever the matrix says: `ucvm-lab build` and suites/boot/test_image_size.py take
its budget_mb. The other checks run only when the matrix lists them."""


def load_matrix(path: Path, env: Mapping[str, str] | None = None) -> matrix.Matrix:
    """matrix.yaml, validated against the drivers (and their settings), profiles, image
    formats and checks the lab has; the known-issues file it names is read and checked too."""
    lab = matrix.load(
        path,
        profiles=PROFILES,
        drivers=SETTINGS,
        image_formats=bootloader.IMAGE_FORMATS,
        checks=CHECKS,
        required_checks=REQUIRED_CHECKS,
        env=env,
    )
    try:
        known_issues.load_known_issues(lab.gate.known_issues, env)
    except known_issues.KnownIssuesError as error:
        where = f"(gate.known_issues of {path})"
        raise matrix.MatrixError(*(f"{line} {where}" for line in error.problems)) from error
    return lab


def make_target(spec: matrix.Target, settings: matrix.Settings, run: Run) -> Target:
    target = DRIVERS[spec.driver](spec, settings, run)
    target.image_format = spec.image_format
    return target
