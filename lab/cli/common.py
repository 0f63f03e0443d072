"""What every command of the command line shares: the console, and how an error is said.

A command that fails on its input says ``ucvm-lab COMMAND: FILE: what is wrong; what to do``
on stderr and exits non-zero (2 for bad input); never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parents[2]  # the checkout: suites/ and conftest.py live there
out = Console(width=None if sys.stdout.isatty() else 200)


def os_problem(error: OSError) -> str:
    """``FILE: what is wrong`` for an OSError (its file when it names one)."""
    if error.filename is None:
        return str(error)
    target = f" -> {error.filename2}" if error.filename2 else ""
    return f"{error.filename}{target}: {error.strerror}"


def error_exit(command: str, message: str, status: int) -> int:
    print(f"ucvm-lab {command}: {message}", file=sys.stderr)
    return status


def number_above(bound: float, what: str, example: str) -> Callable[[str], float]:
    """An argparse type: a finite number above ``bound``; anything else is
    ``'TEXT': expected WHAT > BOUND, e.g. EXAMPLE``."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > bound):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected {what} > {bound:g}, e.g. {example}"
            )
        return value

    return number


def output_dir_problem(out_dir: Path, create: bool = True) -> str | None:
    """Why ``-o`` cannot be the results directory, or None (once made, with ``create``)."""
    if out_dir.exists() and not out_dir.is_dir():
        return f"{out_dir}: exists and is not a directory; give -o a directory (made if missing)"
    if not create:
        return None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"{os_problem(error)}; give -o a directory you can write (made if missing)"
    return None
