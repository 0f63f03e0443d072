"""Fixtures of the suites that boot cells (boot, rebase). Evidence for the report: every cell
test carries the labels the support table is built from, and attaches its console, phase
table and boot record. With --keep-failed (`ucvm-lab run --keep-failed`), a failed cell's
instances stay running (keep_failed)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import allure
import pytest

from lab import evidence, matrix
from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader
from lab.build.osrepo.keys import RepoError
from lab.build.osrepo.manifest import Snapshot
from lab.build.osrepo.repository import Repository
from lab.observe import BootRecord
from lab.run import Run
from lab.services.repo import RepoServer
from lab.targets import reach
from lab.targets.base import Instance, Target, TargetError
from lab.targets.profiles import PROFILES


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Mark an item whose setup or call failed, for keep_failed (its teardown reads it)."""
    report = yield
    if report.failed:  # type: ignore[attr-defined]
        item.ucvm_failed = True  # type: ignore[attr-defined]
    return report


@pytest.fixture(autouse=True)
def keep_failed(request: pytest.FixtureRequest) -> Iterator[None]:
    """--keep-failed: a cell's instances are destroyed at the end of its test, not of their
    ``with`` block (lab.run.Run.held); a failed cell's that still run are kept instead
    (lab.targets.reach.keep), with this worker's repository server, until `ucvm-lab down RUN`
    or `ucvm-lab sweep`. ``ucvm-lab run --keep-failed`` lists them at the end."""
    if "cell" not in request.fixturenames or not request.config.getoption("--keep-failed"):
        yield
        return
    run: Run = request.getfixturevalue("lab_run")
    run.held = []
    try:
        yield
    finally:
        held, run.held = run.held, None
        failed = getattr(request.node, "ucvm_failed", False)
        for instance in held:
            if failed and still_running(instance):
                kept = getattr(request.config, "ucvm_kept", [])  # conftest.py's repo_server
                kept.append(reach.keep(instance, run, request.node.nodeid))
                request.config.ucvm_kept = kept  # type: ignore[attr-defined]
            else:
                instance.destroy()


def still_running(instance: Instance) -> bool:
    try:
        return instance.is_running()
    except TargetError:
        return False


@pytest.fixture(autouse=True)
def cell_labels(request: pytest.FixtureRequest) -> None:
    """Label the result before anything can skip it, so a skip still lands in its cell."""
    if "cell" not in request.fixturenames:
        return
    cell: matrix.Cell = request.getfixturevalue("cell")
    check = request.node.get_closest_marker("check")
    if check is None:
        return
    labels = evidence.cell_labels(
        check=check.args[0],
        target=cell.target.name,
        platform=PROFILES[cell.target.profile].platform,
        version=cell.version,
        evidence=cell.target.evidence,
        tier=cell.target.tier,
        channel=request.getfixturevalue("channel") if "channel" in request.fixturenames else None,
        rebase_from=(
            request.getfixturevalue("rebase_from")
            if "rebase_from" in request.fixturenames
            else None
        ),
        side=cell.side,
        round_=cell.round,
    )
    for name, value in labels.items():
        allure.dynamic.label(name, value)
    profile = PROFILES[cell.target.profile]
    image_format = request.getfixturevalue("lab_targets")[cell.target.name].format_for()
    allure.dynamic.tag(profile.name)
    allure.dynamic.parent_suite(profile.platform)
    allure.dynamic.description(
        f"{profile.platform} profile: machine {profile.machine}, {profile.disk_bus} disk, "
        f"{profile.nic_model} NIC, {image_format} image. " + (profile.notes or profile.not_emulated)
    )
    lab_matrix: matrix.Matrix = request.getfixturevalue("lab_matrix")
    if check.args[0] not in lab_matrix.checks:
        pytest.skip(f"check {check.args[0]!r} is not among matrix.yaml's checks")


@pytest.fixture
def attach_boot(boot_loader: BootLoader) -> Callable[[BootRecord | None, str, str], None]:
    def attach(record: BootRecord | None, console: str, image_format: str) -> None:
        allure.attach(console, evidence.CONSOLE_ATTACHMENT, allure.attachment_type.TEXT)
        if record is not None:
            labels = evidence.boot_labels(accel=record.accel, failed_phase=record.failed_phase)
            for name, value in labels.items():
                allure.dynamic.label(name, value)
            allure.attach(record.phase_table(), "phases", allure.attachment_type.TEXT)
            allure.attach(
                record.to_json(), evidence.BOOT_RECORD_ATTACHMENT, allure.attachment_type.JSON
            )
        image = boot_loader.manifest["images"][image_format]
        allure.attach(json.dumps(image, indent=2), "image", allure.attachment_type.JSON)

    return attach


@pytest.fixture
def expected_snapshot(cell: matrix.Cell, os_repo: Repository) -> Snapshot:
    """What the cell's version (tag, branch, newest, previous) means in this run's repository."""
    manifest = os_repo.manifest_path.read_text()
    allure.attach(manifest, "repository manifest (signed)", allure.attachment_type.TEXT)
    try:
        return os_repo.manifest().resolve(cell.version)
    except RepoError as error:
        pytest.fail(f"matrix.yaml version {cell.version!r}: {error}")


@pytest.fixture
def launch_os(
    cell: matrix.Cell,
    target: Target,
    boot_loader: BootLoader,
    repo_server: RepoServer,
) -> Callable[..., Instance]:
    """Launch the cell's target from the one boot loader image, asking for the cell's version
    and reaching this run's repository server."""

    def launch(**options: object) -> Instance:
        return target.launch(
            boot_loader,
            boot_args=[f"ucvm.version={cell.version}"],
            host_services={GUEST_REPO_ADDRESS: repo_server.port},
            **options,
        )

    return launch
