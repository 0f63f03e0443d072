"""Helpers shared by the lab's own tests (the session fixtures live in the root conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lab import matrix
from lab.run import Run
from lab.targets.libvirt import LibvirtTarget
from lab.targets.profiles import PROFILES
from tests.guest_shell import Guest


@pytest.fixture
def make_local_target(
    lab_matrix: matrix.Matrix, lab_run: Run
) -> Callable[[str, str], LibvirtTarget]:
    """A local libvirt target of a profile, named ``PREFIX-PROFILE``; it must run here (a fault
    test that cannot boot fails rather than skips)."""

    def make(prefix: str, profile: str) -> LibvirtTarget:
        settings = lab_matrix.settings
        target = LibvirtTarget(
            f"{prefix}-{profile}", PROFILES[profile], {}, lab_run,
            default_uri=settings.libvirt_uri, accel=settings.accel,
        )  # fmt: skip
        ok, why = target.available()
        if not ok:
            pytest.fail(f"the local libvirt target must run here: {why}")
        return target

    return make


@pytest.fixture
def guest(tmp_path: Path) -> Guest:
    """The boot loader's shell functions in busybox sh, under ``tmp_path``."""
    return Guest(tmp_path)
