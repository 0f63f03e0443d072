"""What a boot fetched, measured twice: by the guest's block client (its cache stats) and by the
repository server (its access log, per instance). The two must agree."""

from __future__ import annotations

import json
from dataclasses import dataclass

import allure

from lab.build.osrepo.manifest import Snapshot
from lab.observe import BootRecord, settled_fetch_counts
from lab.services.repo import RepoServer
from lab.targets.base import Instance


@dataclass
class CacheMeasure:
    """The two measurements of what a boot fetched: the guest's cache, the server's log."""

    guest_cached: int
    guest_fetched: int
    evicted_blocks: int
    server_image_bytes: int
    server_requests: int
    snapshot_bytes: int

    @property
    def agree(self) -> bool:
        return self.guest_fetched == self.server_image_bytes

    def attach(self, record: BootRecord) -> None:
        """Into the boot record (its phase table and JSON) and as an attachment of its own."""
        record.measurements.update({f"cache_{key}": value for key, value in self.__dict__.items()})
        allure.attach(json.dumps(self.__dict__, indent=2), "cache", allure.attachment_type.JSON)


def measure_cache(
    instance: Instance,
    server: RepoServer,
    snapshot: Snapshot,
    *,
    sent_before: int = 0,
    settle_s: float = 10,
) -> CacheMeasure:
    """Read the guest's block-client stats and the server's bytes for this instance until the
    two agree (a block in flight shows in one before the other), or until ``settle_s``.
    The guest counts this boot only; ``sent_before`` is what the server sent in earlier ones."""
    stats, sent, _ = settled_fetch_counts(
        instance,
        lambda: server.bytes_sent(instance.uuid).image_body_bytes - sent_before,
        settle_s,
    )
    return CacheMeasure(
        guest_cached=stats["cached_bytes"],
        guest_fetched=stats["fetched_bytes"],
        evicted_blocks=stats["evicted_blocks"],
        server_image_bytes=sent,
        server_requests=server.bytes_sent(instance.uuid).requests,
        snapshot_bytes=snapshot.image_bytes,
    )
