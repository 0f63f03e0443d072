"""The appliance's kernel: Debian's generic kernel package, fetched from the package registry.

Debian's cloud kernel lacks e1000 and AHCI, which VirtualBox's default machine needs, so the
generic flavour is used and only the modules the platforms need go into the initramfs.
The .deb is fetched with ``apt-get download`` (never installed: nothing touches /boot).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab import proc
from lab.artifacts import ArtifactStore, file_digest

META_PACKAGE = "linux-image-amd64"


class KernelError(RuntimeError):
    """The kernel package could not be resolved or fetched (stale apt lists, no network)."""


@dataclass(frozen=True)
class Kernel:
    package: str  # e.g. linux-image-6.1.0-56-amd64
    version: str  # Debian package version, e.g. 6.1.192-2
    release: str  # uname -r, e.g. 6.1.0-56-amd64
    deb_sha256: str
    root: Path  # the unpacked package

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def _apt(*args: str) -> str:
    return str(proc.run(*args, error=KernelError).stdout)


def resolve_package(meta: str = META_PACKAGE) -> tuple[str, str]:
    """The concrete kernel package behind the meta-package, and its candidate version."""
    depends = _apt("apt-cache", "depends", meta)
    match = re.search(r"Depends: (linux-image-\d\S*)", depends)
    if not match:
        raise KernelError(
            f"apt-cache depends {meta} names no linux-image package; run apt-get update"
        )
    package = match.group(1)
    policy = _apt("apt-cache", "policy", package)
    candidate = re.search(r"Candidate: (\S+)", policy)
    if not candidate or candidate.group(1) == "(none)":
        raise KernelError(f"{package} has no installable candidate; run apt-get update")
    return package, candidate.group(1)


def fetch(store: ArtifactStore) -> Kernel:
    """Download (once) and unpack (once) the kernel package."""
    package, version = resolve_package()
    release = package.removeprefix("linux-image-")

    def download(work: Path) -> None:
        proc.run("apt-get", "download", "-q", f"{package}={version}", cwd=work, error=KernelError)

    debs = store.get("kernel-deb", {"package": package, "version": version}, download)
    deb = next(debs.glob("*.deb"))
    deb_sha256 = file_digest(deb)

    def unpack(work: Path) -> None:
        proc.run("dpkg-deb", "-x", deb, work / "root", error=KernelError)
        # The package ships no module index; make it here, inside the artifact's build.
        proc.run("depmod", "-b", work / "root", release, error=KernelError)

    root = (
        store.get("kernel-tree", {"deb_sha256": deb_sha256, "indexed": "depmod"}, unpack) / "root"
    )
    return Kernel(package, version, release, deb_sha256, root)
