"""The OS repository a run boots from: every boot loader version, then every release with the
loader it wants, in releases.yaml's order, in ``RUN_DIR/osrepo``.

The session fixtures (conftest.py: ``boot_loaders``, ``os_repo``) and ``ucvm-lab up`` both
make it here, so that a cell reproduced by hand boots from the repository its suite booted
from. Processes of one run (xdist workers) share it: the first publishes, the others find the
same loaders and tags already there (a publish of the same file is a no-op).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from filelock import FileLock

from lab.build import bootloader
from lab.build.osrepo.manifest import MANIFEST
from lab.build.osrepo.repository import Repository
from lab.build.releases import Release
from lab.build.rootfs import ReleaseArtifact

NAME = "ucvm-lab"
DEFAULT_BRANCH = "prod"
DIRECTORY = "osrepo"
PUBLISH_LOCK = "osrepo.publish.lock"


def loader_builds(image_loader: bootloader.BootLoader) -> dict[str, bootloader.BootLoader]:
    """Every loader version the repository publishes; the others than the image's are a
    kernel and an initramfs only (cached by input hash, as the image's loader is)."""
    return {
        version: image_loader
        if version == image_loader.version
        else bootloader.build(loader_version=version)
        for version in bootloader.LOADER_VERSIONS
    }


def publish_run_repository(
    run_dir: Path,
    releases: Sequence[Release],
    artifacts: Sequence[ReleaseArtifact],
    loaders: Mapping[str, bootloader.BootLoader],
) -> Repository:
    """The repository in ``run_dir``: ``loaders`` (version -> loader), then ``artifacts``
    (the built releases, each with the loader its entry of ``releases`` wants)."""
    repository = Repository(run_dir / DIRECTORY)
    wants = {release.tag: release.loader for release in releases}
    with FileLock(str(run_dir / PUBLISH_LOCK)):
        if not (repository.root / MANIFEST).exists():
            repository.init(NAME, default_branch=DEFAULT_BRANCH)
        for version, loader in loaders.items():
            repository.publish_loader(version, loader.vmlinuz, loader.initrd)
        for artifact in artifacts:
            repository.publish(
                artifact.squashfs,
                tag=artifact.tag,
                branch=artifact.branch,
                loader=wants[artifact.tag],
            )
    return repository
