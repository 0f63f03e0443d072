"""What both index readers share: their errors, and reading (and writing) index files that may
be compressed.

A repository index is a Debian `Packages` file (lab/packages/debian.py) or an RPM
`primary.xml` (lab/packages/rpm.py), plain or compressed as its name says (.gz, .xz, .zst).
Either reader reports a file it cannot open or decompress as IndexFileError ("FILE: problem;
what to do") and a stanza it cannot model exactly as IndexFormatError ("FILE:LINE: package
NAME: problem; expected ..."), so that a caller (the CLI, the rootfs build) catches one error
type whatever the format.
"""

from __future__ import annotations

import gzip
import lzma
import zlib
from pathlib import Path
from typing import IO

from lab import proc
from lab.messages import clip


class IndexFormatError(ValueError):
    """An index stanza that cannot be read: "FILE:LINE: package NAME: problem; expected ..."."""

    def __init__(self, origin: str, line: int, package: str, problem: str, expected: str) -> None:
        shown = clip(package, quote=False)
        super().__init__(f"{origin}:{line}: package {shown}: {problem}; expected {expected}")
        self.origin = origin
        self.line = line
        self.package = package


class IndexFileError(IndexFormatError):
    """An index file that cannot be read at all: "FILE: problem; what to do"."""

    def __init__(self, path: Path, problem: str) -> None:
        ValueError.__init__(self, f"{path}: {problem}")
        self.origin, self.line, self.package = str(path), 0, "?"


# --- reading compressed files ------------------------------------------------------------------

_COMPRESSION = {".gz": "gzip", ".xz": "xz", ".zst": "zstd"}
_KINDS = "a Packages index (plain, or .gz, .xz, .zst compressed as its name says)"


def check_index_file(path: Path) -> None:
    """IndexFileError unless ``path`` is a file that can be opened."""
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise IndexFileError(path, f"cannot read it ({error.strerror}); give {_KINDS}") from error


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, decompressed according to its suffix (.gz, .xz, .zst)."""
    check_index_file(path)
    try:
        return _decompressed(path)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
        kind = _COMPRESSION.get(path.suffix, "plain")
        raise IndexFileError(
            path, f"not a valid {kind} file ({clip(str(error), quote=False)}); give {_KINDS}"
        ) from error


def _decompressed(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path) as stream:
            return stream.read()
    if path.suffix == ".xz":
        with lzma.open(path) as stream:
            return stream.read()
    if path.suffix == ".zst":  # no zstd module in the standard library before Python 3.14
        # FileNotFoundError (no zstd) is an OSError: read_bytes() reports it with the others
        done = proc.run("zstd", "-dc", path, text=False, check=False, error=FileNotFoundError)
        if done.returncode != 0:
            said = clip(done.stderr.decode(errors="replace").strip(), quote=False)
            raise IndexFileError(path, f"zstd cannot decompress it ({said}); give {_KINDS}")
        return bytes(done.stdout)
    return path.read_bytes()


def open_for_writing(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8")
    if path.suffix == ".xz":
        return lzma.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")


__all__ = [
    "IndexFileError",
    "IndexFormatError",
    "check_index_file",
    "open_for_writing",
    "read_bytes",
]
