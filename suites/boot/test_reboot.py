"""A reboot keeps what the paper keeps: scratch (made on the first boot, found on the next), the
union root's writable layer, the version pinned at the first boot, and the snapshot cache, so
the second boot fetches little from the server."""

from __future__ import annotations

import pytest

from lab import matrix
from lab.build.osrepo.manifest import Snapshot
from lab.observe import observe_boot
from lab.services.repo import RepoServer
from lab.targets.base import Target
from suites.boot.cache import measure_cache

pytestmark = [pytest.mark.boot, pytest.mark.check("reboot")]


def test_reboot_keeps_scratch_root_and_cache(
    cell: matrix.Cell,
    target: Target,
    launch_os,
    expected_snapshot: Snapshot,
    repo_server: RepoServer,
    lab_matrix: matrix.Matrix,
    attach_boot,
) -> None:
    image_format = target.format_for()
    budget = lab_matrix.settings.boot_budget_s
    first = second = None
    with launch_os() as instance:
        try:
            first = observe_boot(instance, budget)
            assert first.ready, first.summary()
            before = measure_cache(instance, repo_server, expected_snapshot)
            witness = instance.run("echo kept-$$ | tee /root/witness")
            assert witness.ok, witness.output
            instance.reboot()
            second = observe_boot(instance, budget)
            assert second.ready, second.summary()
            # No settling: the server's count since `before` also holds the first boot's last
            # reads (the reboot command itself), which the second boot's client never counts.
            after = measure_cache(
                instance,
                repo_server,
                expected_snapshot,
                sent_before=before.server_image_bytes,
                settle_s=0,
            )
            kept = instance.run("cat /root/witness")
            pin = instance.run("cat /.ucvm/scratch/ucvm/pin")
        finally:  # the evidence, whatever happened: both boots' console
            attach_boot(second or first, instance.console(), image_format)

    scratch = second.phase("scratch").fields
    assert (first.phase("scratch").fields["action"], scratch["action"]) == ("created", "reused")
    assert scratch["boots"] == "2"
    assert kept.output.strip() == witness.output.strip(), "the union root's upper layer was lost"
    assert second.os_version == expected_snapshot.tag
    pinned = dict(line.split("=", 1) for line in pin.output.splitlines() if "=" in line)
    assert (pinned.get("tag"), pinned.get("snapshot")) == (
        expected_snapshot.tag,
        expected_snapshot.image_sha256,
    ), pin.output
    assert pinned.get("generation") == "1", "the same snapshot again: the same writable layer"
    # The second boot reads its blocks from the cache on scratch: the server sends at most a
    # fraction of what the first boot needed (new reads: first-boot-only services differ).
    assert after.guest_fetched <= after.server_image_bytes
    assert after.server_image_bytes < before.server_image_bytes / 2, (
        f"the second boot fetched {after.server_image_bytes} bytes again, the first "
        f"{before.server_image_bytes}: the cache on scratch was not used"
    )
