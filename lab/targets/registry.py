"""From a matrix target to a driver object: the one place that knows every driver."""

from __future__ import annotations

from lab import matrix
from lab.targets.base import Target
from lab.targets.libvirt import LibvirtTarget
from lab.targets.profiles import PROFILES
from lab.targets.run import Run

DRIVERS: dict[str, type[Target]] = {"libvirt": LibvirtTarget}


def make_target(spec: matrix.Target, settings: matrix.Settings, run: Run) -> Target:
    profile = PROFILES[spec.profile]
    if spec.driver == "libvirt":
        return LibvirtTarget(
            spec.name,
            profile,
            dict(spec.settings),
            run,
            default_uri=settings.libvirt_uri,
            accel=settings.accel,
            scratch_gb=settings.scratch_gb,
        )
    raise matrix.MatrixError(f"no driver {spec.driver!r}; known: {', '.join(DRIVERS)}")
