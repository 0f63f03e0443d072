"""Boots to `ready`: one test per (target, version) cell of the matrix."""

from __future__ import annotations

import pytest

from lab import matrix
from lab.build.bootloader import BootLoader
from lab.observe import observe_boot
from lab.targets.base import Target

pytestmark = [pytest.mark.boot, pytest.mark.check("boot")]


def test_boots_to_ready(
    cell: matrix.Cell,
    target: Target,
    boot_loader: BootLoader,
    lab_matrix: matrix.Matrix,
    attach_boot,
) -> None:
    image_format = cell.target.image_format or target.profile.image_format
    with target.launch(boot_loader, image_format=image_format) as instance:
        record = observe_boot(instance, lab_matrix.settings.boot_budget_s)
        attach_boot(record, instance.current_boot_console(), image_format)

    assert record.ready, record.summary()
    assert [p.name for p in record.phases] == ["start", "modules", "network", "scratch", "ready"]
    nic = record.phase("network").fields
    assert nic["driver"] == target.profile.nic_driver, (
        f"the guest's NIC is driven by {nic['driver']}, not the {target.profile.name} profile's "
        f"{target.profile.nic_driver}: the domain does not have the platform's hardware"
    )
    assert record.phase("scratch").fields["action"] == "created"
    assert record.os_phase == "not-run"  # until OS on demand lands (issue 4)
