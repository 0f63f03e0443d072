"""One ``run()`` for every subprocess the lab starts and waits for.

It logs the command (at debug level, on the ``lab.proc`` logger), captures its output and, when
the command fails, raises an error that names the command, its exit code and the tail of its
stderr: the lines a person reads first. Each caller passes its own error class, so a failed
``mksquashfs`` is a build error and a failed ``qemu-img`` a target error, with one wording.
Long-running children (servers, guests) are not started here: lab.services owns those.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

LOG = logging.getLogger("lab.proc")
TAIL_CHARS = 2000  # of stderr in an error message: the end of it says what went wrong


class CommandError(RuntimeError):
    """A command failed, could not start, or ran out of time."""


def command_line(args: Sequence[str | Path]) -> str:
    """The command as a shell would show it (quoted where needed), for logs and messages."""
    return shlex.join(str(arg) for arg in args)


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else f"…{text[-limit:]}"


def run(
    *args: str | Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    input: str | bytes | None = None,
    stdout: IO[Any] | None = None,
    merge_stderr: bool = False,
    text: bool = True,
    check: bool = True,
    error: type[Exception] = CommandError,
    what: str | None = None,
) -> subprocess.CompletedProcess[Any]:
    """Run ``args`` to completion and return it, stdout and stderr captured (as text, or as
    bytes with ``text=False``). ``stdout`` sends the output to an open file instead (a build
    log; with ``merge_stderr`` stderr goes there too). Raise ``error`` (CommandError by
    default) when the command cannot be started, outlives ``timeout`` seconds, or, unless
    ``check`` is false (the caller reads a failing command's output itself), exits non-zero.
    The message starts with ``what`` if given, else the command line."""
    argv = [str(arg) for arg in args]
    shown = what or command_line(argv)
    LOG.debug("run: %s", command_line(argv))
    streams: dict[str, Any] = {"stdout": stdout, "stderr": subprocess.PIPE}
    if stdout is None:
        streams["stdout"] = subprocess.PIPE
    elif merge_stderr:
        streams["stderr"] = subprocess.STDOUT
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=input,
            text=text,
            timeout=timeout,
            check=False,
            **streams,
        )
    except FileNotFoundError as missing:
        raise error(f"{shown}: cannot run {argv[0]} ({missing.strerror})") from missing
    except subprocess.TimeoutExpired as expired:
        raise error(f"{shown}: did not finish within {timeout:g} s") from expired
    if check and done.returncode != 0:
        raise error(f"{shown} failed (exit {done.returncode}): {output_tail(done)}")
    return done


def output_tail(done: subprocess.CompletedProcess[Any]) -> str:
    """The end of what a finished command said: its stderr, else its stdout."""
    said = done.stderr or done.stdout or ""
    if isinstance(said, bytes):
        said = said.decode(errors="replace")
    return tail(said)


def package_versions(*packages: str) -> dict[str, str]:
    """The installed version of each Debian package named (dpkg-query), for an artifact's
    input hash: a tool upgraded on the host rebuilds what it made. A package that is not
    installed is left out (dpkg-query exits 1 then, and still lists the others)."""
    query = run("dpkg-query", "-W", *packages, check=False)
    return dict(line.split("\t", 1) for line in query.stdout.splitlines() if "\t" in line)
