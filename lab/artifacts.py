"""Content-addressed artifact store: build once, share between xdist workers, never rebuild
an unchanged input.

An artifact lives in ``ROOT/<kind>-<key>/`` where ``key`` hashes everything that went into it.
Builders write into a temporary directory that is renamed into place only when complete, so a
crashed build leaves nothing that looks finished. A file lock serialises concurrent builders of
the same key (the second one waits, then finds the finished artifact).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

BUILDER_VERSION = "1"  # bump to invalidate every cached artifact after a builder change


def default_root() -> Path:
    """UCVM_CACHE, else a system cache dir for root (QEMU runs as libvirt-qemu and cannot
    traverse /root), else the user's XDG cache."""
    if os.environ.get("UCVM_CACHE"):
        return Path(os.environ["UCVM_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/ucvm-lab")
    return Path(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "ucvm-lab"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_key(inputs: dict[str, Any]) -> str:
    canonical = json.dumps({"builder": BUILDER_VERSION, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ArtifactStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_root()
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, kind: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """The artifact directory for ``inputs``; ``build(tmpdir)`` makes it if absent."""
        final = self.root / f"{kind}-{input_key(inputs)}"
        if (final / "inputs.json").exists():
            return final
        with FileLock(str(final) + ".lock"):
            if (final / "inputs.json").exists():
                return final
            work = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=self.root))
            try:
                build(work)
                (work / "inputs.json").write_text(json.dumps(inputs, indent=2, default=str))
                work.chmod(0o755)  # mkdtemp makes it 0700; hypervisors run as other users
                work.rename(final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return final
