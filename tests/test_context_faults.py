"""Contextualization's bad input and faults, seen from a real guest: a malformed
[ucernvm-begin] block, a metadata service that is down or too slow, user-data over the
platform's limit, and YAML that cloud-init rejects. The boot goes on in each case (the boot
loader reports what it rejected and why); only the oversized user-data is refused, before
anything is launched."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.build import context as ctx
from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader
from lab.observe import BootRecord, observe_boot
from lab.run import Run
from lab.services.repo import RepoServer
from lab.targets.libvirt import LibvirtTarget

pytestmark = pytest.mark.boot
BUDGET_S = 120  # a boot that stops after scratch (ucvm.os=none), with one channel timing out
LOADER_ONLY = ["ucvm.os=none"]


@pytest.fixture
def make_target(make_local_target):
    return lambda profile: make_local_target("ctxfaults", profile)


def context_of(user_data: bytes, hostname: str = "ucvm-faults") -> ctx.Context:
    return ctx.Context(instance_id="i-faults", hostname=hostname, user_data=user_data)


def boot_loader_only(target: LibvirtTarget, loader: BootLoader, context: ctx.Context,
                     **options: object) -> BootRecord:  # fmt: skip
    with target.launch(loader, context, boot_args=LOADER_ONLY, **options) as instance:
        return observe_boot(instance, BUDGET_S)


def steps(record: BootRecord, step: str) -> list[dict[str, str]]:
    return [s.fields | {"status": s.status} for s in record.context_steps if s.step == step]


def test_bad_block_lines_are_rejected_with_reasons_and_the_rest_applies(
    make_target, boot_loader: BootLoader
) -> None:
    user_data = b"""#!/bin/sh
echo a script part: the boot loader only reads the block
[ucernvm-begin]
cvmfs_tag=1.1
resize_rootfs=sometimes
no_such_key=1
a line without an equals sign
[ucernvm-end]
"""
    record = boot_loader_only(make_target("kvm"), boot_loader, context_of(user_data))
    assert record.ready, record.summary()
    assert record.context_step("channel").fields["channel"] == "nocloud"
    assert record.context_step("cvmfs_tag").status == "applied"
    rejected = steps(record, "ucernvm")
    assert [r["line"] for r in rejected] == ["5", "6", "7"]
    assert "expected on or off" in rejected[0]["reason"]
    assert rejected[1]["key"] == "no_such_key" and "unknown key" in rejected[1]["reason"]
    assert "not key=value" in rejected[2]["reason"]
    assert record.phase("context").fields["rejected"] == "3"
    assert record.context_step("hostname").fields["value"] == "ucvm-faults"


def test_block_without_its_end_is_ignored(make_target, boot_loader: BootLoader) -> None:
    user_data = b"[ucernvm-begin]\ncvmfs_tag=1.1\nresize_rootfs=off\n"
    record = boot_loader_only(make_target("kvm"), boot_loader, context_of(user_data))
    assert record.ready, record.summary()
    assert "without [ucernvm-end]" in record.context_step("ucernvm").fields["reason"]
    assert record.context_step("cvmfs_tag") is None, "a key of an unterminated block applied"
    assert record.context_step("user-data").status == "handed-on"  # the OS still gets it


def test_metadata_service_down_times_out_and_the_boot_goes_on(
    make_target, boot_loader: BootLoader
) -> None:
    target = make_target("ec2")
    with target.launch(boot_loader, context_of(b"#cloud-config\n{}\n"), boot_args=LOADER_ONLY
                       ) as instance:  # fmt: skip
        instance.metadata.stop()  # before the guest's kernel is even up
        record = observe_boot(instance, BUDGET_S)
    assert record.ready, record.summary()
    channels = steps(record, "channel")
    assert channels[0]["status"] == "unreachable" and channels[0]["channel"] == "ec2-imds"
    assert channels[-1]["status"] == "none"
    assert record.phase("context").fields["channel"] == "none"


def test_slow_metadata_service_times_out_per_request(make_target, boot_loader: BootLoader) -> None:
    delay_s = 60  # far beyond the boot loader's 5 s per request
    target = make_target("gce")
    with target.launch(boot_loader, context_of(b"#cloud-config\n{}\n"), boot_args=LOADER_ONLY,
                       metadata_delay_s=delay_s) as instance:  # fmt: skip
        record = observe_boot(instance, BUDGET_S)
        asked = [path for _, path in instance.metadata.arrivals]  # none was answered in time
    assert record.ready, record.summary()
    unreachable = record.context_step("channel")
    assert unreachable.status == "none"
    assert steps(record, "channel")[0]["status"] == "unreachable"
    assert any(path.startswith("/computeMetadata/v1/instance/hostname") for path in asked)


def test_user_data_over_the_platform_limit_is_refused_before_launch(
    make_target, boot_loader: BootLoader, lab_run: Run
) -> None:
    target = make_target("ec2")
    before = set(lab_run.dir.iterdir())
    with pytest.raises(ctx.ContextError, match=r"16,384 bytes \(16 KiB\)"):
        target.launch(boot_loader, context_of(b"#" * (16 * 1024 + 1)))
    assert set(lab_run.dir.iterdir()) == before, "something was made for a refused launch"
    assert not [d for d in target.conn.listAllDomains() if "ctxfaults-ec2" in d.name()]


def test_yaml_cloud_init_rejects_is_reported_and_the_os_comes_up(
    make_target, boot_loader: BootLoader, repo_server: RepoServer, tmp_path: Path
) -> None:
    """A full boot into the OS: cloud-init logs the broken part and the console shows why."""
    user_data = b"#cloud-config\nusers: [ {name: broken\nruncmd: oops\n"
    target = make_target("kvm")
    services = {GUEST_REPO_ADDRESS: repo_server.port}
    with target.launch(boot_loader, context_of(user_data), host_services=services) as instance:
        record = observe_boot(instance, 480)  # cloud-init's stages under TCG: ~180 s
    assert record.ready, record.summary()
    complaints = [
        s.fields.get("detail", "") for s in record.context_steps if s.step == "cloud-init"
    ]
    assert any("Failed loading yaml blob" in c for c in complaints), complaints
    assert record.ready_field("cloud_init") == "done"  # a warning, not a failed stage
