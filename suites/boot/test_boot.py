"""Boots to `ready`: one test per (target, version) cell of the matrix. The one boot loader
image fetches the cell's OS version lazily from the run's repository and hands over to its
systemd, which prints `ready`."""

from __future__ import annotations

import pytest

from lab import matrix
from lab.build.osrepo.manifest import Snapshot
from lab.observe import PHASES, observe_boot
from lab.services.repo import RepoServer
from lab.targets.base import Target
from suites.boot.cache import measure_cache

pytestmark = [pytest.mark.boot, pytest.mark.check("boot")]


def test_boots_version_to_ready(
    cell: matrix.Cell,
    target: Target,
    launch_os,
    expected_snapshot: Snapshot,
    repo_server: RepoServer,
    lab_matrix: matrix.Matrix,
    attach_boot,
) -> None:
    image_format = target.format_for()
    record = cache = None
    with launch_os() as instance:
        try:
            record = observe_boot(instance, lab_matrix.settings.boot_budget_s)
            if record.ready:
                cache = measure_cache(instance, repo_server, expected_snapshot)
                cache.attach(record)
        finally:
            attach_boot(record, instance.console(), image_format)

    assert record.ready, record.summary()
    assert [p.name for p in record.phases] == list(PHASES)
    nic = record.phase("network").fields
    assert nic["driver"] == target.profile.nic_driver, (
        f"the guest's NIC is driven by {nic['driver']}, not the {target.profile.name} profile's "
        f"{target.profile.nic_driver}: the domain does not have the platform's hardware"
    )
    assert record.phase("scratch").fields["action"] == "created"
    assert record.phase("repo").fields["tag"] == expected_snapshot.tag
    assert record.os_version == expected_snapshot.tag, "systemd came up in another OS version"
    assert record.ready_field("snapshot") == expected_snapshot.image_sha256[:12]
    assert record.ready_field("units_failed") == "0", "systemd units failed in the booted OS"
    # Lazily: the OS read part of its snapshot, and the guest's cache and the server agree.
    assert 0 < cache.guest_cached < cache.snapshot_bytes
    assert cache.agree, (
        f"the guest counts {cache.guest_fetched} bytes fetched, the server's log "
        f"{cache.server_image_bytes} sent to this instance"
    )
    assert record.ready_bytes("cache_bytes") is not None
