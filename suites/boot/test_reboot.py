"""Scratch space survives a reboot: made on first boot, found and kept on the next."""

from __future__ import annotations

import pytest

from lab import matrix
from lab.build.bootloader import BootLoader
from lab.observe import observe_boot
from lab.targets.base import Target

pytestmark = [pytest.mark.boot, pytest.mark.check("reboot")]


def test_scratch_is_kept_across_reboot(
    cell: matrix.Cell,
    target: Target,
    boot_loader: BootLoader,
    lab_matrix: matrix.Matrix,
    attach_boot,
) -> None:
    image_format = cell.target.image_format or target.profile.image_format
    budget = lab_matrix.settings.boot_budget_s
    first = second = None
    with target.launch(boot_loader, image_format=image_format) as instance:
        try:
            first = observe_boot(instance, budget)
            assert first.ready, first.summary()
            marker = instance.run("echo kept-$$ > /scratch/ucvm/witness; cat /scratch/ucvm/witness")
            assert marker.ok, marker.output
            instance.reboot()
            second = observe_boot(instance, budget)
            witness = instance.run("cat /scratch/ucvm/witness")
        finally:  # the evidence, whatever happened: both boots' console
            attach_boot(second or first, instance.console(), image_format)

    assert second.ready, second.summary()
    scratch = second.phase("scratch").fields
    assert (first.phase("scratch").fields["action"], scratch["action"]) == ("created", "reused")
    assert scratch["boots"] == "2"
    assert witness.output.strip() == marker.output.strip()
