"""ucvm-blockd, the boot loader's lazy block client (docs/os-on-demand.md, "The block client").

One C file, built as a static binary that the bootloader build copies into the initramfs at
/bin/ucvm-blockd. musl-gcc is preferred: the binary is about a quarter of the size of the glibc
one (~290 KB against ~1 MB) and the boot loader's images must stay small. gcc with glibc is the
fallback when musl-gcc is missing or cannot build it. Caching is the caller's business: it hashes
BLOCKD_SOURCE.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lab import proc

BLOCKD_SOURCE = Path(__file__).with_name("ucvm-blockd.c")
BINARY_NAME = "ucvm-blockd"

WARNINGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror")
COMPILE_TIMEOUT_S = 300


def _host_include_dirs() -> list[str]:
    """The host's header directories, searched after musl's own.

    musl-gcc searches only musl's headers; <sodium.h> and <linux/nbd.h> (with its <asm/...>)
    live in the host's /usr/include. -idirafter keeps musl's libc headers first.
    """
    multiarch = proc.run("gcc", "-print-multiarch", check=False, error=RuntimeError).stdout.strip()
    dirs = ["/usr/include"]
    if multiarch:
        dirs.append(f"/usr/include/{multiarch}")
    return [arg for d in dirs for arg in ("-idirafter", d)]


def _libsodium_archive() -> str:
    """The absolute path of libsodium.a: with musl-gcc a -L to the host's library directory
    would also make -lc pick glibc's libc.a."""
    found = proc.run(
        "gcc", "-print-file-name=libsodium.a", check=False, error=RuntimeError
    ).stdout.strip()
    return str(Path(found).resolve()) if found and Path(found).is_file() else "libsodium.a"


def _commands(source: Path, out: Path) -> list[tuple[str, list[str]]]:
    commands = []
    if shutil.which("musl-gcc"):
        musl = ["musl-gcc", *WARNINGS, *_host_include_dirs(), "-o", str(out), str(source)]
        commands.append(("musl-gcc", [*musl, _libsodium_archive()]))
    gcc = ["gcc", *WARNINGS, "-o", str(out), str(source), "-l:libsodium.a"]
    commands.append(("gcc", gcc))
    return commands


def build_blockd(out_dir: Path) -> Path:
    """Compile BLOCKD_SOURCE into out_dir/ucvm-blockd and return its path.

    Tries musl-gcc first, then gcc. The binary appears only once complete (built under a
    temporary name, then renamed). Raises RuntimeError with the compilers' stderr on failure.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / BINARY_NAME
    partial = out_dir / f".{BINARY_NAME}.{os.getpid()}.part"
    failures = []
    for compiler, command in _commands(BLOCKD_SOURCE, partial):
        result = proc.run(*command, timeout=COMPILE_TIMEOUT_S, check=False, error=RuntimeError)
        if result.returncode == 0:
            partial.replace(final)
            return final
        failures.append(f"{compiler} (exit {result.returncode}):\n{result.stderr.strip()}")
    partial.unlink(missing_ok=True)
    raise RuntimeError(
        f"cannot build {BINARY_NAME} from {BLOCKD_SOURCE}:\n" + "\n\n".join(failures)
    )
