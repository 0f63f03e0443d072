"""The repository's crash-safe file writes: fsync'd temporary files renamed into place.

A writer killed at any point leaves either the old file or the new one, never a mix, and at
worst a dotfile ``.tmp-*`` that the next writer (holding the lock) removes and nginx never
serves. The signing key (keys.py) and the repository (repository.py) both write this way.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(directory: Path, suffix: str = "") -> Path:
    return directory / f"{TEMP_PREFIX}{secrets.token_hex(6)}{suffix}"


def write_temp(directory: Path, data: bytes, mode: int = 0o644) -> Path:
    """``data`` in a new fsync'd dotfile of ``directory`` (dotfiles are never served)."""
    temp = temp_path(directory)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    return temp


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data``: readers see the old file or the new one, never a mix."""
    temp = write_temp(path.parent, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
