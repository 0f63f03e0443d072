"""The OS repository's faults, seen from a real guest: a corrupted snapshot, a dead server, a
manifest signed by another key, an unknown version. Each boots the real boot loader image
against a small real repository (a squashfs of a few files: these boots stop before systemd)
served by nginx, and checks the failure the lab reports, by phase and by reason."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import matrix
from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader
from lab.build.osrepo.keys import SigningKey
from lab.build.osrepo.repository import Repository
from lab.observe import BootRecord, observe_boot
from lab.run import Run
from lab.services.repo import RepoServer
from lab.targets.libvirt import LibvirtTarget
from lab.targets.profiles import PROFILES

pytestmark = pytest.mark.boot
# Far above the server-down retries (6 attempts, 1+2+4+8+16 s apart): a hang would show as one
BUDGET_S = 150


@pytest.fixture
def kvm_target(lab_matrix: matrix.Matrix, lab_run: Run) -> LibvirtTarget:
    settings = lab_matrix.settings
    target = LibvirtTarget(
        "osfaults", PROFILES["kvm"], {}, lab_run, default_uri=settings.libvirt_uri,
        accel=settings.accel,
    )  # fmt: skip
    ok, why = target.available()
    if not ok:
        pytest.fail(f"the local libvirt target must run here: {why}")
    return target


def small_snapshot(directory: Path) -> Path:
    tree = directory / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("NAME=tiny\n")
    (tree / "payload").write_bytes(bytes(range(256)) * 2048)  # 512 KiB: several blocks
    image = directory / "tiny.squashfs"
    subprocess.run(["mksquashfs", tree, image, "-noappend", "-comp", "zstd", "-quiet"], check=True)
    return image


def make_repository(root: Path, image: Path, key: SigningKey | None = None) -> Path:
    repository = Repository(root / "repo", key=key)
    repository.init("faults", default_branch="prod")
    repository.publish(image, tag="1.0", branch="prod")
    repository.publish(image, tag="1.1", branch="prod")
    return repository.root


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    return make_repository(tmp_path, small_snapshot(tmp_path))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    servers: list[RepoServer] = []

    def start(root: Path) -> RepoServer:
        server = RepoServer(root, tmp_path / f"nginx-{len(servers)}")
        servers.append(server)
        return server.__enter__()

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def boot(target: LibvirtTarget, loader: BootLoader, port: int, *boot_args: str) -> BootRecord:
    with target.launch(
        loader, boot_args=list(boot_args), host_services={GUEST_REPO_ADDRESS: port}
    ) as instance:
        return observe_boot(instance, BUDGET_S)


def test_a_snapshot_with_one_flipped_byte_is_refused(
    kvm_target: LibvirtTarget, boot_loader: BootLoader, tiny_repo: Path, serve
) -> None:
    manifest = Repository(tiny_repo).manifest()
    snapshot = manifest.resolve("newest")
    image = tiny_repo / "snapshots" / f"{snapshot.image_sha256}.img"
    data = bytearray(image.read_bytes())
    data[1024] ^= 0x01  # inside the first block, which mounting reads
    image.unlink()  # a new file: the published one may be a hard link to the source image
    image.write_bytes(bytes(data))
    server = serve(tiny_repo)

    record = boot(kvm_target, boot_loader, server.port)

    assert record.outcome == "failed", record.summary()
    assert record.failed_phase == "mount"
    assert record.reason.startswith("snapshot refused"), record.reason
    assert "1.1" in record.reason and snapshot.image_sha256[:12] in record.reason
    assert "failed verification" in record.reason


def test_a_dead_server_fails_the_boot_as_repository_unreachable(
    kvm_target: LibvirtTarget, boot_loader: BootLoader, tiny_repo: Path, serve
) -> None:
    server = serve(tiny_repo)
    server.stop()

    record = boot(kvm_target, boot_loader, server.port)

    assert record.outcome == "failed", record.summary()  # not a hang: it said so in time
    assert record.failed_phase == "repo"
    assert record.reason.startswith("repository unreachable"), record.reason
    assert "169.254.169.100" in record.reason  # the message names the server


def test_a_manifest_signed_by_another_key_is_refused(
    kvm_target: LibvirtTarget, boot_loader: BootLoader, tmp_path: Path, serve
) -> None:
    stranger = SigningKey.load_or_create(tmp_path / "stranger" / "ed25519")
    root = make_repository(tmp_path, small_snapshot(tmp_path), key=stranger)
    server = serve(root)

    record = boot(kvm_target, boot_loader, server.port)

    assert record.outcome == "failed", record.summary()
    assert record.failed_phase == "repo"
    assert record.reason.startswith("manifest refused"), record.reason
    assert stranger.keyid in record.reason


def test_an_unknown_version_lists_the_published_ones(
    kvm_target: LibvirtTarget, boot_loader: BootLoader, tiny_repo: Path, serve
) -> None:
    server = serve(tiny_repo)

    record = boot(kvm_target, boot_loader, server.port, "ucvm.version=9.9")

    assert record.outcome == "failed", record.summary()
    assert record.failed_phase == "repo"
    assert record.reason.startswith("unknown version"), record.reason
    assert "requested=9.9" in record.reason
    assert "tags: 1.0 1.1" in record.reason and "branches: prod" in record.reason


def test_a_full_cache_evicts_old_blocks_and_the_boot_goes_on(
    kvm_target: LibvirtTarget,
    boot_loader: BootLoader,
    os_repo: Repository,
    repo_server: RepoServer,
) -> None:
    """A real lazy boot into systemd with a cache far smaller than what the boot reads."""
    limit_mb = 8
    snapshot = os_repo.manifest().resolve("newest")
    with kvm_target.launch(
        boot_loader,
        boot_args=["ucvm.version=newest", f"ucvm.cache_max_mb={limit_mb}"],
        host_services={GUEST_REPO_ADDRESS: repo_server.port},
    ) as instance:
        record = observe_boot(instance, 400)

    assert record.ready, record.summary()
    assert record.os_version == snapshot.tag
    assert int(record.ready_field("evicted_blocks")) > 0
    assert record.ready_bytes("cache_bytes") <= limit_mb << 20
    assert record.ready_bytes("fetched_bytes") > limit_mb << 20  # it read more than fits
