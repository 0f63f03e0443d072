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
    input: str | None = None,
    error: type[Exception] = CommandError,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` to completion and return it (stdout and stderr captured as text). Raise
    ``error`` (CommandError by default) when it exits non-zero, cannot be started or outlives
    ``timeout`` seconds; the message starts with ``what`` if given, else the command line."""
    argv = [str(arg) for arg in args]
    shown = what or command_line(argv)
    LOG.debug("run: %s", command_line(argv))
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as missing:
        raise error(f"{shown}: cannot run {argv[0]} ({missing.strerror})") from missing
    except subprocess.TimeoutExpired as expired:
        raise error(f"{shown}: did not finish within {timeout:g} s") from expired
    if done.returncode != 0:
        output = tail(done.stderr or done.stdout)
        raise error(f"{shown} failed (exit {done.returncode}): {output}")
    return done
